//! Settings: the site file, then the user's file, then `BOXRUN_*` variables, merged once.
//!
//! The site file is `/etc/boxrun/config.toml` (`BOXRUN_SYSTEM_CONFIG` names another one, for
//! packaging and tests); the user's is `$XDG_CONFIG_HOME/boxrun/config.toml` (or `BOXRUN_CONFIG`).
//! Unknown keys are errors that name the file, so a typo never silently does nothing.
//! `allowed_registries` is site policy: when the site file sets it, the user's file cannot widen it;
//! `allow_unconfined` and `fakeroot_capabilities` are read from the site file alone.
//! (boxrun is not setuid, so this is a guardrail for users, not a security boundary.)

use std::collections::BTreeMap;
use std::env;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::reference::{DOCKER_HUB, Reference};

const SYSTEM_CONFIG: &str = "/etc/boxrun/config.toml";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{what} must be an absolute path, got '{path}'")]
    Relative { what: String, path: PathBuf },
    #[error("cannot find a cache directory: set BOXRUN_CACHE, XDG_CACHE_HOME or HOME")]
    NoHome,
    #[error(
        "registry '{registry}' is not allowed on this system (allowed: {allowed}); ask your site's admins or use an allowed registry"
    )]
    RegistryNotAllowed { registry: String, allowed: String },
}

/// What a site (or a user) can say about one registry, under `[registries."host"]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// A pull-through cache to try first: `host[:port]` or a URL.
    pub mirror: Option<String>,
    /// Allow plain HTTP (and skip nothing else): for registries inside a trusted network.
    #[serde(default)]
    pub insecure: bool,
    /// A PEM bundle of extra CA certificates for this registry.
    pub ca_file: Option<PathBuf>,
}

/// One configuration file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    cache_dir: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    default_registry: Option<String>,
    shared_cache_dir: Option<PathBuf>,
    #[serde(default)]
    registries: BTreeMap<String, RegistryConfig>,
    allowed_registries: Option<Vec<String>>,
    mount_paths: Option<Vec<String>>,
    remove_env_keys: Option<Vec<String>>,
    env_passthrough: Option<Vec<String>>,
    seccomp: Option<PathBuf>,
    allow_unconfined: Option<bool>,
    fakeroot_capabilities: Option<Vec<String>>,
    wrap_require_image: Option<bool>,
    tmp_from: Option<TmpFrom>,
}

/// The merged settings every command works from.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Blobs, references and staging: `$BOXRUN_CACHE`, else `$XDG_CACHE_HOME/boxrun`, else `~/.cache/boxrun`.
    pub cache_dir: PathBuf,
    /// Unpacked root file systems (sites put this on node-local disk); default: the cache.
    pub data_dir: PathBuf,
    pub default_registry: String,
    pub shared_cache_dir: Option<PathBuf>,
    pub registries: BTreeMap<String, RegistryConfig>,
    pub allowed_registries: Option<Vec<String>>,
    pub mount_paths: Vec<String>,
    pub remove_env_keys: Vec<String>,
    pub env_passthrough: Vec<String>,
    /// A seccomp profile file to use instead of the built-in one.
    pub seccomp: Option<PathBuf>,
    /// May users run without seccomp (`--seccomp=unconfined`)? Site policy only.
    pub allow_unconfined: bool,
    /// The capabilities a `--fakeroot` job keeps (site policy only).
    pub fakeroot_capabilities: Vec<String>,
    /// Must `boxrun wrap` find an image (no bare jobs)? Site policy only.
    pub wrap_require_image: bool,
    /// What backs the container's /tmp.
    pub tmp_from: TmpFrom,
}

/// What backs the container's /tmp: memory, or the scheduler's per-job scratch directory
/// (`_CONDOR_SCRATCH_DIR`, else `TMPDIR`), as HTCondor's MOUNT_UNDER_SCRATCH does.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum TmpFrom {
    #[default]
    Tmpfs,
    Scratch,
}

impl Settings {
    /// Read the site and user files and the environment.
    pub fn load() -> Result<Settings, ConfigError> {
        let system = env_path("BOXRUN_SYSTEM_CONFIG").unwrap_or_else(|| SYSTEM_CONFIG.into());
        let user = env_path("BOXRUN_CONFIG").or_else(user_config_path);
        let system = read_file(&system)?;
        let user = match user {
            Some(path) => read_file(&path)?,
            None => ConfigFile::default(),
        };
        Settings::merge(system, user)
    }

    fn merge(system: ConfigFile, user: ConfigFile) -> Result<Settings, ConfigError> {
        let cache_dir = match env_path("BOXRUN_CACHE").or(user.cache_dir).or(system.cache_dir) {
            Some(dir) => dir,
            None => default_cache_dir()?,
        };
        let data_dir =
            env_path("BOXRUN_DATA").or(user.data_dir).or(system.data_dir).unwrap_or(cache_dir.clone());
        let mut registries = system.registries;
        registries.extend(user.registries);
        let settings = Settings {
            cache_dir,
            data_dir,
            default_registry: env::var("BOXRUN_DEFAULT_REGISTRY")
                .ok()
                .or(user.default_registry)
                .or(system.default_registry)
                .unwrap_or_else(|| DOCKER_HUB.to_string()),
            shared_cache_dir: user.shared_cache_dir.or(system.shared_cache_dir),
            registries,
            allowed_registries: system.allowed_registries.or(user.allowed_registries),
            mount_paths: user.mount_paths.or(system.mount_paths).unwrap_or_default(),
            remove_env_keys: user.remove_env_keys.or(system.remove_env_keys).unwrap_or_default(),
            env_passthrough: user.env_passthrough.or(system.env_passthrough).unwrap_or_default(),
            seccomp: user.seccomp.or(system.seccomp),
            allow_unconfined: system.allow_unconfined.unwrap_or(false),
            wrap_require_image: system.wrap_require_image.unwrap_or(false),
            tmp_from: user.tmp_from.or(system.tmp_from).unwrap_or_default(),
            fakeroot_capabilities: system.fakeroot_capabilities.unwrap_or_else(|| {
                crate::sandbox::lockdown::FAKEROOT_DEFAULT.iter().map(|c| c.to_string()).collect()
            }),
        };
        settings.check_paths()?;
        Ok(settings)
    }

    fn check_paths(&self) -> Result<(), ConfigError> {
        let mut paths = vec![("cache_dir", &self.cache_dir), ("data_dir", &self.data_dir)];
        paths.extend(self.shared_cache_dir.iter().map(|p| ("shared_cache_dir", p)));
        for (host, registry) in &self.registries {
            if let Some(ca) = &registry.ca_file
                && ca.is_relative()
            {
                let what = format!("registries.\"{host}\".ca_file");
                return Err(ConfigError::Relative { what, path: ca.clone() });
            }
        }
        match paths.into_iter().find(|(_, p)| p.is_relative()) {
            Some((what, path)) => Err(ConfigError::Relative { what: what.into(), path: path.clone() }),
            None => Ok(()),
        }
    }

    /// The `[registries."host"]` entry for a registry, or the defaults.
    pub fn registry(&self, registry: &str) -> RegistryConfig {
        self.registries.get(registry).cloned().unwrap_or_default()
    }

    /// Refuse a reference whose registry (or registry/repository prefix) the site did not allow.
    pub fn check_allowed(&self, reference: &Reference) -> Result<(), ConfigError> {
        let Some(allowed) = &self.allowed_registries else { return Ok(()) };
        let full = format!("{}/{}", reference.registry, reference.repository);
        let permits = |entry: &String| {
            let entry = entry.trim_end_matches('/');
            full == entry || full.starts_with(&format!("{entry}/"))
        };
        if allowed.iter().any(permits) {
            Ok(())
        } else {
            Err(ConfigError::RegistryNotAllowed {
                registry: reference.registry.clone(),
                allowed: allowed.join(", "),
            })
        }
    }
}

fn env_path(name: &str) -> Option<PathBuf> {
    env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// `$HOME`, else the passwd entry's (Slurm starts OCI runtimes with no HOME).
fn home() -> Option<PathBuf> {
    env_path("HOME").or_else(|| {
        let uid = nix::unistd::getuid().as_raw();
        crate::accounts::user_by_uid(uid).map(|u| u.home).filter(|d| d.is_absolute())
    })
}

fn user_config_path() -> Option<PathBuf> {
    let base = env_path("XDG_CONFIG_HOME").or_else(|| home().map(|h| h.join(".config")))?;
    Some(base.join("boxrun/config.toml"))
}

fn default_cache_dir() -> Result<PathBuf, ConfigError> {
    env_path("XDG_CACHE_HOME")
        .or_else(|| home().map(|h| h.join(".cache")))
        .map(|base| base.join("boxrun"))
        .ok_or(ConfigError::NoHome)
}

/// A missing file is an empty one; an unreadable or invalid one is an error naming it.
fn read_file(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = match crate::small_file::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigFile::default()),
        Err(source) => return Err(ConfigError::Read { path: path.into(), source }),
    };
    toml::from_str(&text)
        .map_err(|e| ConfigError::Parse { path: path.into(), message: e.message().to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> ConfigFile {
        toml::from_str(text).unwrap()
    }

    fn settings(system: &str, user: &str) -> Settings {
        let mut system = file(system);
        system.cache_dir.get_or_insert("/cache".into());
        Settings::merge(system, file(user)).unwrap()
    }

    #[test]
    fn user_file_overrides_site_file_but_not_its_policy() {
        let s = settings(
            "default_registry = 'site.org'\nallowed_registries = ['site.org']\n[registries.'site.org']\nca_file = '/etc/ca.pem'",
            "default_registry = 'ghcr.io'\nallowed_registries = ['ghcr.io']\n[registries.'ghcr.io']\ninsecure = true",
        );
        assert_eq!(s.default_registry, "ghcr.io");
        assert_eq!(s.allowed_registries, Some(vec!["site.org".to_string()]));
        assert!(s.registry("ghcr.io").insecure);
        assert_eq!(s.registry("site.org").ca_file, Some("/etc/ca.pem".into()));
        assert_eq!(s.data_dir, PathBuf::from("/cache"));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = toml::from_str::<ConfigFile>("cache_dri = '/x'").unwrap_err();
        assert!(err.message().contains("cache_dri"), "{err}");
    }

    #[test]
    fn allowed_registries_match_whole_components() {
        let s = settings("allowed_registries = ['ghcr.io/org', 'site.org']", "");
        let check = |r: &str| s.check_allowed(&Reference::parse(r, DOCKER_HUB).unwrap()).is_ok();
        assert!(check("ghcr.io/org/app"));
        assert!(check("site.org/anything/here"));
        assert!(!check("ghcr.io/organisation/app"));
        assert!(!check("debian"));
    }

    #[test]
    fn relative_paths_are_refused() {
        let err = Settings::merge(file("cache_dir = 'rel'"), ConfigFile::default()).unwrap_err();
        assert!(err.to_string().contains("cache_dir must be an absolute path"), "{err}");
    }
}
