//! Image references: `[host[:port]/]path[:tag][@sha256:…]`, normalised as docker does.
//!
//! One-word names live under `library/` on Docker Hub; a first component is a registry host only
//! when it contains a `.` or a `:` or is `localhost`, so `ubuntu/x` stays on the default registry.
//! Pure functions, no I/O: every error names the part of the reference that is wrong.

use std::fmt;

use thiserror::Error;

use crate::digest::Digest;

/// Docker Hub's name in references and its API host.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";
const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

#[derive(Debug, Error)]
#[error("invalid image reference '{input}': {problem}")]
pub struct ReferenceError {
    pub input: String,
    pub problem: String,
}

/// A parsed, normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// `docker.io`, `ghcr.io`, `127.0.0.1:5000`: the name users write, not the API host.
    pub registry: String,
    /// `library/debian`, `org/app`.
    pub repository: String,
    /// The tag; `latest` when neither a tag nor a digest was given.
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parse `input`; names without a registry host go to `default_registry`.
    pub fn parse(input: &str, default_registry: &str) -> Result<Reference, ReferenceError> {
        let error = |problem: String| ReferenceError { input: input.to_string(), problem };
        if input.is_empty() {
            return Err(error("the reference is empty".into()));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                let digest = Digest::parse(digest).map_err(|e| error(e.to_string()))?;
                (rest, Some(digest))
            }
            None => (input, None),
        };
        let (name, tag) = split_tag(rest);
        if let Some(tag) = tag {
            check_tag(tag).map_err(error)?;
        }
        let (registry, path) = split_registry(name, default_registry);
        check_registry(&registry).map_err(error)?;
        check_path(path).map_err(error)?;
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        // After normalisation, so that the name printed parses again (found by fuzzing).
        if repository.len() > MAX_NAME_LEN {
            return Err(error(format!("the repository name is longer than {MAX_NAME_LEN} characters")));
        }
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (tag, _) => tag.map(str::to_string),
        };
        Ok(Reference { registry, repository, tag, digest })
    }

    /// The host (and port) the registry API lives on.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB { DOCKER_HUB_API } else { &self.registry }
    }

    /// What to ask the registry's manifest endpoint for: the digest if pinned, else the tag.
    pub fn manifest_key(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Split `name[:tag]`: the tag is after the last `:` that follows the last `/`
/// (so the port in `host:5000/x` is not a tag).
fn split_tag(rest: &str) -> (&str, Option<&str>) {
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    }
}

fn split_registry<'a>(name: &'a str, default_registry: &str) -> (String, &'a str) {
    match name.split_once('/') {
        Some((first, path)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            let registry = if first == "index.docker.io" { DOCKER_HUB } else { first };
            (registry.to_string(), path)
        }
        _ => (default_registry.to_string(), name),
    }
}

fn check_tag(tag: &str) -> Result<(), String> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    let first_ok = tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
    if tag.is_empty() || tag.len() > MAX_TAG_LEN || !first_ok || !tag.chars().all(valid_char) {
        return Err(format!(
            "tag '{tag}' must be 1-128 characters of a-z, A-Z, 0-9, '_', '.', '-' and not start with '.' or '-'"
        ));
    }
    Ok(())
}

fn check_registry(registry: &str) -> Result<(), String> {
    let (host, port) = match registry.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || registry.starts_with('[') => (host, Some(port)),
        _ => (registry, None),
    };
    let host_ok = if let Some(v6) = host.strip_prefix('[') {
        v6.strip_suffix(']').is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    };
    if !host_ok {
        return Err(format!("registry host '{host}' is not a valid host name or address"));
    }
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return Err(format!("registry port '{port}' is not a number from 0 to 65535"));
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the repository name is empty".into());
    }
    for component in path.split('/') {
        if component.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(format!(
                "repository name component '{component}' must be lowercase (write '{}')",
                component.to_ascii_lowercase()
            ));
        }
        if !valid_path_component(component) {
            return Err(format!(
                "repository name component '{component}' may only hold a-z, 0-9 and single separators '.', '_', '__' or '-' between them"
            ));
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, the distribution spec's path component.
fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let dashes = separator.bytes().all(|b| b == b'-');
        if !(matches!(separator, "." | "_" | "__") || dashes) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &str) -> Reference {
        Reference::parse(input, DOCKER_HUB).unwrap()
    }

    fn problem(input: &str) -> String {
        Reference::parse(input, DOCKER_HUB).unwrap_err().to_string()
    }

    #[test]
    fn one_word_names_go_to_docker_hub_library() {
        let r = parse("debian");
        assert_eq!(r.to_string(), "docker.io/library/debian:latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(parse("ubuntu/app:1.0").to_string(), "docker.io/ubuntu/app:1.0");
    }

    #[test]
    fn hosts_ports_tags_and_digests() {
        let hex = "b".repeat(64);
        let r = parse(&format!("127.0.0.1:5000/org/app:1.4@sha256:{hex}"));
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "org/app");
        assert_eq!(r.tag.as_deref(), Some("1.4"));
        assert_eq!(r.manifest_key(), format!("sha256:{hex}"));
        let r = parse("localhost/x");
        assert_eq!((r.registry.as_str(), r.tag.as_deref()), ("localhost", Some("latest")));
        assert_eq!(parse("[::1]:5000/x").registry, "[::1]:5000");
        assert_eq!(parse(&format!("x@sha256:{hex}")).tag, None);
    }

    #[test]
    fn errors_name_the_bad_part() {
        assert!(problem("UPPER/x").contains("'UPPER' must be lowercase"));
        assert!(problem("ghcr.io/a//b").contains("component ''"));
        assert!(problem("x:-bad").contains("tag '-bad'"));
        assert!(problem("bad_host!.io/x").contains("registry host 'bad_host!.io'"));
        assert!(problem("host.io:99999/x").contains("port '99999'"));
        assert!(problem("x@sha256:abc").contains("64 lowercase hex"));
        assert!(problem("").contains("empty"));
    }

    #[test]
    fn the_length_limit_counts_the_library_prefix() {
        let name = "a".repeat(250);
        assert!(problem(&name).contains("longer than 255"));
        let printed = Reference::parse(&"a".repeat(247), DOCKER_HUB).unwrap().to_string();
        assert!(Reference::parse(&printed, DOCKER_HUB).is_ok());
    }

    #[test]
    fn default_registry_is_configurable() {
        let r = Reference::parse("tools/x", "registry.site.org").unwrap();
        assert_eq!(r.to_string(), "registry.site.org/tools/x:latest");
    }
}
