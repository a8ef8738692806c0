//! Registry authentication: credentials from the files docker and podman write, and the
//! `WWW-Authenticate` challenge (Basic, or Bearer with a token from the realm).

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;

use super::RegistryError;

/// A user name and password (or identity token) for one registry.
#[derive(Clone, PartialEq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// Where they came from, for error messages.
    pub source: PathBuf,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({} from {})", self.username, self.source.display())
    }
}

impl Credentials {
    pub fn basic_header(&self) -> String {
        format!("Basic {}", BASE64.encode(format!("{}:{}", self.username, self.password)))
    }
}

/// The files searched, in order: podman's, then docker's.
pub fn credential_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(path) = std::env::var_os("REGISTRY_AUTH_FILE") {
        files.push(PathBuf::from(path));
    }
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR") {
        files.push(PathBuf::from(runtime).join("containers/auth.json"));
    }
    let docker_config = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
    if let Some(dir) = docker_config {
        files.push(dir.join("config.json"));
    }
    files
}

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: std::collections::HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

/// Find credentials for `registry` (as written in references: `ghcr.io`, `host:5000`).
pub fn lookup(registry: &str) -> Result<Option<Credentials>, RegistryError> {
    for path in credential_files() {
        let text = match fs_err::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(RegistryError::CredentialFile { path, message: e.to_string() }),
        };
        let file: AuthFile = serde_json::from_str(&text)
            .map_err(|e| RegistryError::CredentialFile { path: path.clone(), message: e.to_string() })?;
        let entry = file.auths.iter().find(|(key, _)| auth_key_matches(key, registry));
        if let Some((_, entry)) = entry {
            return decode_entry(entry, &path).map(Some);
        }
    }
    Ok(None)
}

/// Keys are written as `host`, `https://host`, `https://host/v1/` (docker's Hub entry) …
fn auth_key_matches(key: &str, registry: &str) -> bool {
    let host = key.trim_start_matches("https://").trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host);
    host == registry || (registry == "docker.io" && host == "index.docker.io")
}

fn decode_entry(entry: &AuthEntry, path: &std::path::Path) -> Result<Credentials, RegistryError> {
    let bad = |message: &str| RegistryError::CredentialFile { path: path.into(), message: message.into() };
    let (username, password) = if let Some(auth) = &entry.auth {
        let decoded = BASE64.decode(auth.trim()).map_err(|_| bad("an \"auth\" value is not base64"))?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad("an \"auth\" value is not UTF-8"))?;
        let (user, pass) = decoded.split_once(':').ok_or_else(|| bad("an \"auth\" value has no ':'"))?;
        (user.to_string(), pass.to_string())
    } else if let (Some(user), Some(pass)) = (&entry.username, &entry.password) {
        (user.clone(), pass.clone())
    } else if let Some(token) = &entry.identitytoken {
        ("<token>".to_string(), token.clone())
    } else {
        return Err(bad("an entry has neither \"auth\" nor \"username\"/\"password\""));
    };
    Ok(Credentials { username, password, source: path.into() })
}

/// What a 401 asks for.
#[derive(Debug, PartialEq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

/// Parse `WWW-Authenticate: Bearer realm="…",service="…",scope="…"` (or `Basic realm="…"`).
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(params);
    let get = |name: &str| params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
    Some(Challenge::Bearer { realm: get("realm")?, service: get("service"), scope: get("scope") })
}

/// `k="v",k2="v2"` with commas allowed inside quotes (scopes contain them).
fn parse_params(text: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut rest = text.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_string();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.push((key, value.to_string()));
        rest = remaining.trim_start_matches([',', ' ']);
    }
    params
}

#[derive(Deserialize)]
pub struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
}

impl TokenResponse {
    pub fn into_token(self) -> Option<String> {
        self.token.or(self.access_token).filter(|t| !t.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_with_commas_in_scope() {
        let header =
            r#"Bearer realm="https://auth.io/token",service="reg.io",scope="repository:a/b:pull,push""#;
        assert_eq!(
            parse_challenge(header),
            Some(Challenge::Bearer {
                realm: "https://auth.io/token".into(),
                service: Some("reg.io".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(parse_challenge(r#"Basic realm="Registry Realm""#), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn auth_entries_decode() {
        let entry = AuthEntry {
            auth: Some(BASE64.encode("alice:s3:cret")),
            username: None,
            password: None,
            identitytoken: None,
        };
        let creds = decode_entry(&entry, std::path::Path::new("/x")).unwrap();
        assert_eq!((creds.username.as_str(), creds.password.as_str()), ("alice", "s3:cret"));
        assert!(auth_key_matches("https://index.docker.io/v1/", "docker.io"));
        assert!(auth_key_matches("127.0.0.1:5000", "127.0.0.1:5000"));
        assert!(!auth_key_matches("127.0.0.1:5001", "127.0.0.1:5000"));
    }
}
