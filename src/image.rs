//! What an image's config says about running it: Entrypoint, Cmd, Env, WorkingDir.
//!
//! Read once at pull time and kept in the image record, so that starting a job reads one small
//! file and parses no image JSON.

use serde::{Deserialize, Serialize};

/// The parts of an OCI/Docker image config that shape a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// `KEY=VALUE` strings, in the image's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
}

impl RunConfig {
    /// Extract from the image config blob's JSON.
    pub fn from_config_json(bytes: &[u8]) -> Result<RunConfig, String> {
        let config = oci_spec::image::ImageConfiguration::from_reader(bytes).map_err(|e| e.to_string())?;
        let Some(c) = config.config() else { return Ok(RunConfig::default()) };
        Ok(RunConfig {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().filter(|w| !w.is_empty()),
        })
    }

    /// The command line docker would run: `--entrypoint` replaces the image's entrypoint (and
    /// drops its Cmd); arguments given replace Cmd.
    pub fn argv(&self, entrypoint: Option<&str>, args: &[String]) -> Vec<String> {
        let (entry, default_cmd) = match entrypoint {
            Some("") => (Vec::new(), Vec::new()),
            Some(e) => (vec![e.to_string()], Vec::new()),
            None => (self.entrypoint.clone(), self.cmd.clone()),
        };
        let tail = if args.is_empty() { default_cmd } else { args.to_vec() };
        entry.into_iter().chain(tail).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn argv_follows_docker() {
        let image =
            RunConfig { entrypoint: strings(&["/init"]), cmd: strings(&["serve"]), ..Default::default() };
        assert_eq!(image.argv(None, &[]), strings(&["/init", "serve"]));
        assert_eq!(image.argv(None, &strings(&["run", "x"])), strings(&["/init", "run", "x"]));
        assert_eq!(image.argv(Some("/bin/sh"), &[]), strings(&["/bin/sh"]));
        assert_eq!(image.argv(Some("/bin/sh"), &strings(&["-c", "id"])), strings(&["/bin/sh", "-c", "id"]));
        assert_eq!(image.argv(Some(""), &strings(&["id"])), strings(&["id"]));
        let plain = RunConfig { cmd: strings(&["/hello"]), ..Default::default() };
        assert_eq!(plain.argv(None, &strings(&["ls"])), strings(&["ls"]));
    }

    #[test]
    fn reads_an_image_config() {
        let json = br#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["/hello"],"WorkingDir":"/srv"},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let run = RunConfig::from_config_json(json).unwrap();
        assert_eq!(run.cmd, strings(&["/hello"]));
        assert_eq!(run.env, strings(&["PATH=/bin"]));
        assert_eq!(run.working_dir.as_deref(), Some("/srv"));
    }
}
