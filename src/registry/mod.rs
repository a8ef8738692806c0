//! A small client for the OCI distribution API (v2), on blocking reqwest with rustls.
//!
//! Our own, rather than an async crate's, because those buffer whole layers in memory: here a
//! blob streams straight into the store while it is hashed. One [`Client`] talks to one
//! repository on one registry (or its mirror); it answers 401 challenges (Basic, or Bearer with
//! a token from the realm), retries 5xx, 429 and broken connections with backoff, and leaves
//! redirects to blob storage to reqwest, which drops `Authorization` when the host changes.

pub mod auth;
pub mod blob;
pub mod manifest;
pub mod resolve;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::blocking::{Client as HttpClient, RequestBuilder, Response};
use reqwest::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use thiserror::Error;

use crate::config::Settings;
use crate::reference::Reference;
use auth::{Challenge, Credentials};

const USER_AGENT: &str = concat!("boxrun/", env!("CARGO_PKG_VERSION"));
const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("cannot reach registry {registry} ({url}): {message}{hint}")]
    Network { registry: String, url: String, message: String, hint: &'static str },
    #[error("registry {registry} refused {what}: HTTP 401 Unauthorized; {hint}")]
    Unauthorized { registry: String, what: String, hint: String },
    #[error("{what} not found on registry {registry} (HTTP 404); check the name and tag")]
    NotFound { registry: String, what: String },
    #[error("registry {registry} answered {status} for {url}{detail}")]
    Status { registry: String, url: String, status: StatusCode, detail: String },
    #[error("credentials file {path} is not valid: {message}")]
    CredentialFile { path: PathBuf, message: String },
    #[error("cannot read the CA file {path} for registry {registry}: {message}")]
    CaFile { registry: String, path: PathBuf, message: String },
    #[error("registry {registry}: {message}")]
    Protocol { registry: String, message: String },
}

/// A session with one repository of one registry.
pub struct Client {
    http: HttpClient,
    /// `https://host:port` (or `http://` for loopback and registries configured insecure).
    base: String,
    /// The registry's name as in references (`docker.io`, `host:5000`).
    registry: String,
    repository: String,
    credentials: Option<Credentials>,
    /// The `Authorization` value that worked last (a Bearer token or Basic).
    authorization: Mutex<Option<String>>,
}

impl Client {
    /// A client for the repository `reference` names, on its registry.
    pub fn new(settings: &Settings, reference: &Reference) -> Result<Client, RegistryError> {
        Client::for_host(settings, &reference.registry, reference.api_host(), &reference.repository)
    }

    /// A client for the mirror configured for `reference`'s registry, if there is one.
    pub fn mirror(settings: &Settings, reference: &Reference) -> Result<Option<Client>, RegistryError> {
        let Some(mirror) = settings.registry(&reference.registry).mirror else { return Ok(None) };
        let host = mirror.trim_start_matches("https://").trim_start_matches("http://");
        let host = host.trim_end_matches('/').to_string();
        let mut client = Client::for_host(settings, &host, &host, &reference.repository)?;
        if mirror.starts_with("http://") {
            client.base = format!("http://{host}");
        }
        Ok(Some(client))
    }

    fn for_host(
        settings: &Settings,
        registry: &str,
        api_host: &str,
        repository: &str,
    ) -> Result<Client, RegistryError> {
        install_crypto_provider();
        let config = settings.registry(registry);
        // A CA file says the registry speaks TLS, even on loopback; otherwise loopback and
        // registries configured insecure get plain HTTP, and everything else HTTPS.
        let plain = config.ca_file.is_none() && (config.insecure || is_loopback(api_host));
        let scheme = if plain { "http" } else { "https" };
        let mut builder = HttpClient::builder()
            .user_agent(USER_AGENT)
            .dns_resolver(Arc::new(resolve::HostResolver))
            .connect_timeout(Duration::from_secs(30))
            // Blocking reqwest applies this to the response head and to each body read, not to
            // the whole transfer, so a large layer on a slow link is fine; a stalled one is not.
            .timeout(Duration::from_secs(120));
        if let Some(path) = &config.ca_file {
            let ca_error = |message: String| RegistryError::CaFile {
                registry: registry.into(),
                path: path.clone(),
                message,
            };
            let pem = fs_err::read(path).map_err(|e| ca_error(e.to_string()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_error(e.to_string()))?;
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder.build().map_err(|e| RegistryError::Protocol {
            registry: registry.into(),
            message: format!("cannot set up the HTTP client: {e}"),
        })?;
        Ok(Client {
            http,
            base: format!("{scheme}://{api_host}"),
            registry: registry.into(),
            repository: repository.into(),
            credentials: auth::lookup(registry)?,
            authorization: Mutex::new(None),
        })
    }

    pub fn registry(&self) -> &str {
        &self.registry
    }

    fn url(&self, kind: &str, key: &str) -> String {
        format!("{}/v2/{}/{kind}/{key}", self.base, self.repository)
    }

    /// GET with authentication and retries. `what` names the object in errors.
    /// A non-success status other than 401/404/5xx is returned to the caller to interpret.
    fn get(
        &self,
        url: &str,
        what: &str,
        customize: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let mut authenticated = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = customize(self.http.get(url));
            if let Some(value) = self.authorization.lock().expect("auth lock").clone() {
                request = request.header(AUTHORIZATION, value);
            }
            let response = match request.send() {
                Ok(response) => response,
                Err(e) if attempt < ATTEMPTS && is_transient(&e) => {
                    tracing::debug!("{url}: {e}; retrying");
                    backoff(attempt);
                    continue;
                }
                Err(e) => return Err(self.network_error(url, &e)),
            };
            match response.status() {
                StatusCode::UNAUTHORIZED if !authenticated => {
                    self.authenticate(&response, what)?;
                    authenticated = true;
                }
                StatusCode::UNAUTHORIZED => return Err(self.unauthorized(what)),
                StatusCode::NOT_FOUND => {
                    return Err(RegistryError::NotFound {
                        registry: self.registry.clone(),
                        what: what.into(),
                    });
                }
                s if (s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS) && attempt < ATTEMPTS => {
                    tracing::debug!("{url}: {s}; retrying");
                    backoff(attempt);
                }
                s if s.is_success() => return Ok(response),
                status => return Err(self.status_error(url, status, response)),
            }
        }
    }

    /// Answer a 401: remember the `Authorization` value to send from now on.
    fn authenticate(&self, response: &Response, what: &str) -> Result<(), RegistryError> {
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(auth::parse_challenge);
        let value = match challenge {
            Some(Challenge::Bearer { realm, service, scope }) => {
                self.fetch_token(&realm, service, scope, what)?
            }
            Some(Challenge::Basic) => match &self.credentials {
                Some(credentials) => credentials.basic_header(),
                None => return Err(self.unauthorized(what)),
            },
            None => return Err(self.unauthorized(what)),
        };
        *self.authorization.lock().expect("auth lock") = Some(value);
        Ok(())
    }

    fn fetch_token(
        &self,
        realm: &str,
        service: Option<String>,
        scope: Option<String>,
        what: &str,
    ) -> Result<String, RegistryError> {
        let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", self.repository));
        let mut query = vec![("scope", scope)];
        query.extend(service.map(|s| ("service", s)));
        let url = reqwest::Url::parse_with_params(realm, &query).map_err(|e| RegistryError::Protocol {
            registry: self.registry.clone(),
            message: format!("the token realm '{realm}' is not a URL: {e}"),
        })?;
        let mut request = self.http.get(url);
        if let Some(credentials) = &self.credentials {
            request = request.header(AUTHORIZATION, credentials.basic_header());
        }
        let response = request.send().map_err(|e| self.network_error(realm, &e))?;
        match response.status() {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => return Err(self.unauthorized(what)),
            status => return Err(self.status_error(realm, status, response)),
        }
        let unreadable =
            |e: String| self.protocol(format!("the token service {realm} sent an unreadable answer: {e}"));
        let body = response.bytes().map_err(|e| unreadable(e.to_string()))?;
        let token: auth::TokenResponse =
            serde_json::from_slice(&body).map_err(|e| unreadable(e.to_string()))?;
        let token = token
            .into_token()
            .ok_or_else(|| self.protocol(format!("the token service {realm} sent no token")))?;
        Ok(format!("Bearer {token}"))
    }

    fn protocol(&self, message: String) -> RegistryError {
        RegistryError::Protocol { registry: self.registry.clone(), message }
    }

    fn unauthorized(&self, what: &str) -> RegistryError {
        let hint = match &self.credentials {
            Some(c) => format!(
                "the credentials for user '{}' in {} were rejected; fix them there",
                c.username,
                c.source.display()
            ),
            None => format!(
                "it needs credentials: add an entry for '{}' to ~/.docker/config.json or $XDG_RUNTIME_DIR/containers/auth.json",
                self.registry
            ),
        };
        RegistryError::Unauthorized { registry: self.registry.clone(), what: what.into(), hint }
    }

    fn network_error(&self, url: &str, error: &reqwest::Error) -> RegistryError {
        let message = error_chain(error);
        let hint = if message.contains("certificate") || message.contains("UnknownIssuer") {
            "; if the registry uses a site CA, set ca_file under [registries.\"HOST\"] in the config"
        } else {
            "; check the network, or use --offline for images already in the cache"
        };
        RegistryError::Network { registry: self.registry.clone(), url: url.into(), message, hint }
    }

    fn status_error(&self, url: &str, status: StatusCode, response: Response) -> RegistryError {
        let body = response.text().unwrap_or_default();
        let detail = match body.trim() {
            "" => String::new(),
            text => format!(": {}", text.chars().take(300).collect::<String>()),
        };
        RegistryError::Status { registry: self.registry.clone(), url: url.into(), status, detail }
    }
}

/// rustls needs a process-wide crypto provider; boxrun uses ring (CRATES.md: aws-lc costs 44 s
/// of build and 2 MB for nothing we need).
fn install_crypto_provider() {
    // Err means another thread installed it first, which is just as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Plain HTTP is allowed only to this machine (and to registries configured insecure).
pub fn is_loopback(api_host: &str) -> bool {
    let host = match api_host.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => api_host,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn is_transient(error: &reqwest::Error) -> bool {
    error.is_connect() || error.is_timeout() || error.is_request() || error.is_body()
}

/// 200 ms, 400 ms, 800 ms, … (capped at 5 s).
pub fn backoff(attempt: u32) {
    let delay = FIRST_BACKOFF * 2u32.pow(attempt.saturating_sub(1).min(5));
    std::thread::sleep(delay.min(Duration::from_secs(5)));
}

/// reqwest's Display shows only the outer error; the cause (TLS, DNS, reset) is in the chain.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_is_plain_http_by_default() {
        for host in ["127.0.0.1:5000", "localhost", "localhost:80", "[::1]:5000", "127.1.2.3"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["registry-1.docker.io", "10.0.0.1:5000", "localhost.evil.org", "ghcr.io"] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
