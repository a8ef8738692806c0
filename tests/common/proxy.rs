//! A small fault-injecting HTTP/1.1 proxy for the registry integration tests.
//!
//! It sits between boxrun's registry client and a local plain-HTTP
//! `docker-registry`, records every request it answers, and can misbehave
//! in the ways described by [`Fault`]: corrupt blobs, answer 503, cut blob
//! bodies short, redirect blobs to another host, or demand bearer tokens.
//!
//! Every connection carries exactly one request: both the upstream request and
//! the answer to the client carry `Connection: close`, so the client reconnects
//! per request and the proxy needs no keep-alive bookkeeping. Request bodies are
//! supported with `Content-Length` only (no chunked uploads).
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// The bearer token that `/token` hands out under [`Fault::BearerGate`].
pub const BEARER_TOKEN: &str = "bxr-test-7f3a9c1e5d2b48a6";
const BLOB_MARK: &str = "/blobs/sha256:";
const STORAGE: &str = "/_storage";
const BASIC_CHALLENGE: &str = "WWW-Authenticate: Basic realm=\"boxrun-test\"\r\n";
const JSON: &str = "Content-Type: application/json\r\n";
const CLOSE: &str = "Connection: close\r\n\r\n";
/// Headers not copied from one side to the other (the proxy sets its own).
const DROPPED: [&str; 4] = ["connection", "keep-alive", "proxy-connection", "host"];
/// Not synchronisation: only there so that a stuck peer cannot hang a test forever.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    None,
    /// Every blob GET (path contains "/blobs/sha256:") has the byte at offset
    /// len/2 of its body XORed with 0xff, length unchanged.
    FlipByteInBlobs,
    /// The first `n` blob GETs are answered `503 Service Unavailable`.
    ServerErrors(usize),
    /// The first blob GET of each distinct blob path that upstream answers 200
    /// gets the headers and only the first `bytes` bytes of the body, then the
    /// socket is closed. Later GETs (Range ones too) pass through untouched.
    ResetBlobsAfter(usize),
    /// Blob GETs are answered `307` to `http://localhost:<port>/_storage<path>`;
    /// requests for `/_storage/...` are forwarded with the prefix removed.
    RedirectBlobs,
    /// `/v2/...` needs `Authorization: Bearer <BEARER_TOKEN>`, which `GET /token`
    /// hands out for `Authorization: Basic base64(user:pass)`.
    BearerGate {
        user: String,
        pass: String,
    },
}

#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    pub host: Option<String>,
    pub status: u16,
}

pub struct Proxy {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: SocketAddr,
    addr: SocketAddr,
    fault: Fault,
    stop: AtomicBool,
    seen: Mutex<Vec<Seen>>,
    errors_served: AtomicUsize,
    reset_paths: Mutex<HashSet<String>>,
}

/// A start line (request or status line) plus headers.
struct Head {
    line: String,
    headers: Vec<(String, String)>,
}

/// One client connection and the single request it carries.
struct Conn<'a> {
    sh: &'a Shared,
    client: TcpStream,
    method: String,
    path: String,
    head: Head,
    body: Vec<u8>,
}

impl Proxy {
    /// Listen on 127.0.0.1:0 in a background thread, forward to `upstream`.
    pub fn start(upstream: SocketAddr, fault: Fault) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy listener");
        let shared = Arc::new(Shared {
            upstream,
            addr: listener.local_addr().expect("proxy local addr"),
            fault,
            stop: AtomicBool::new(false),
            seen: Mutex::new(Vec::new()),
            errors_served: AtomicUsize::new(0),
            reset_paths: Mutex::new(HashSet::new()),
        });
        let sh = Arc::clone(&shared);
        let accept = Some(thread::spawn(move || accept_loop(&listener, &sh)));
        Proxy { shared, accept }
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Every request seen so far, in order (status = what the proxy answered the client).
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// How many blob GETs were answered (any status), optionally only those of one digest.
    pub fn blob_gets(&self, digest: Option<&str>) -> usize {
        let seen = self.shared.seen.lock().unwrap();
        seen.iter()
            .filter(|s| s.method == "GET" && s.path.contains(BLOB_MARK))
            .filter(|s| digest.is_none_or(|d| s.path.contains(d)))
            .count()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept(); the loop then sees the flag and ends.
        let _ = TcpStream::connect(self.shared.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(client) = client else { continue };
        let shared = Arc::clone(shared);
        thread::spawn(move || {
            let _ = handle(client, &shared);
        });
    }
}

fn handle(client: TcpStream, sh: &Shared) -> io::Result<()> {
    client.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let Some(head) = read_head(&mut reader)? else {
        return Ok(()); // connected and closed without a request (e.g. Drop's wake-up)
    };
    let mut body = vec![0; content_length(&head).unwrap_or(0) as usize];
    reader.read_exact(&mut body)?;
    let mut words = head.line.split_whitespace().map(str::to_string);
    let method = words.next().unwrap_or_default();
    let path = words.next().unwrap_or_default();
    Conn { sh, client, method, path, head, body }.route()
}

impl Conn<'_> {
    fn blob_get(&self) -> bool {
        self.method == "GET" && self.path.contains(BLOB_MARK)
    }

    fn route(&mut self) -> io::Result<()> {
        let sh = self.sh;
        match &sh.fault {
            Fault::BearerGate { user, pass } => self.gate(&format!("{user}:{pass}")),
            Fault::ServerErrors(n)
                if self.blob_get() && sh.errors_served.fetch_add(1, Ordering::SeqCst) < *n =>
            {
                let body = br#"{"errors":[{"code":"UNAVAILABLE","message":"injected"}]}"#;
                self.local("503 Service Unavailable", "", body)
            }
            Fault::RedirectBlobs if self.blob_get() && !self.path.starts_with(STORAGE) => {
                let (port, path) = (sh.addr.port(), &self.path);
                let to = format!("Location: http://localhost:{port}{STORAGE}{path}\r\n");
                self.local("307 Temporary Redirect", &to, b"")
            }
            _ => self.forward(),
        }
    }

    /// The bearer-token gate: `/token` hands out tokens, `/v2` needs one.
    fn gate(&mut self, creds: &str) -> io::Result<()> {
        if self.path == "/token" || self.path.starts_with("/token?") {
            if !self.head.has_auth("Basic", &base64(creds.as_bytes())) {
                return self.local("401 Unauthorized", BASIC_CHALLENGE, b"");
            }
            let body = format!(r#"{{"token":"{BEARER_TOKEN}","expires_in":300}}"#);
            return self.local("200 OK", JSON, body.as_bytes());
        }
        if self.head.has_auth("Bearer", BEARER_TOKEN)
            || !(self.path == "/v2" || self.path.starts_with("/v2/"))
        {
            return self.forward();
        }
        let realm = format!("http://{}/token", self.sh.addr);
        let mut challenge = format!("WWW-Authenticate: Bearer realm=\"{realm}\",service=\"boxrun-test\"");
        if let Some(repo) = repo_name(&self.path) {
            challenge.push_str(&format!(",scope=\"repository:{repo}:pull\""));
        }
        challenge.push_str("\r\n");
        let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
        self.local("401 Unauthorized", &challenge, body)
    }

    /// Answer without asking upstream; `status` is e.g. "404 Not Found", `headers`
    /// are complete `Name: value\r\n` lines.
    fn local(&mut self, status: &str, headers: &str, body: &[u8]) -> io::Result<()> {
        self.record(status[..3].parse().unwrap_or(0));
        let len = body.len();
        let head = format!("HTTP/1.1 {status}\r\n{headers}Content-Length: {len}\r\n{CLOSE}");
        self.client.write_all(head.as_bytes())?;
        if self.method != "HEAD" {
            self.client.write_all(body)?;
        }
        Ok(())
    }

    fn record(&self, status: u16) {
        let header = |name: &str| self.head.get(name).map(str::to_string);
        self.sh.seen.lock().unwrap().push(Seen {
            method: self.method.clone(),
            path: self.path.clone(),
            range: header("range"),
            authorization: header("authorization"),
            host: header("host"),
            status,
        });
    }

    fn forward(&mut self) -> io::Result<()> {
        let Ok(up) = TcpStream::connect(self.sh.upstream) else {
            return self.local("502 Bad Gateway", "", b"");
        };
        up.set_read_timeout(Some(IO_TIMEOUT))?;
        self.send_upstream(&up)?;
        let mut up = BufReader::new(up);
        let resp = read_head(&mut up)?.ok_or(io::ErrorKind::UnexpectedEof)?;
        let status = resp.line.split_whitespace().nth(1).unwrap_or_default();
        let status = status.parse().unwrap_or(0);
        // Recorded before the client sees a byte, so seen() never lags behind the client.
        self.record(status);
        self.send_response_head(&resp)?;
        if self.method == "HEAD" || matches!(status, 100..=199 | 204 | 304) {
            return Ok(());
        }
        self.relay(status, content_length(&resp), &mut up)
    }

    fn send_upstream(&self, mut up: &TcpStream) -> io::Result<()> {
        let path = match self.path.strip_prefix(STORAGE) {
            Some(rest) if rest.starts_with('/') => rest,
            _ => &self.path,
        };
        let (method, upstream) = (&self.method, self.sh.upstream);
        let line = format!("{method} {path} HTTP/1.1\r\nHost: {upstream}");
        up.write_all(serialise(&line, &self.head.headers, str::to_string).as_bytes())?;
        up.write_all(&self.body)
    }

    /// Relay upstream's status line and headers, pointing URLs (Location) at the proxy.
    fn send_response_head(&mut self, resp: &Head) -> io::Result<()> {
        let from = format!("http://{}", self.sh.upstream);
        let to = format!("http://{}", self.sh.addr);
        let out = serialise(&resp.line, &resp.headers, |v| v.replace(&from, &to));
        self.client.write_all(out.as_bytes())
    }

    /// Copy the response body to the client, applying the body-level faults.
    fn relay(&mut self, status: u16, len: Option<u64>, up: &mut impl BufRead) -> io::Result<()> {
        let blob_ok = self.blob_get() && (200..300).contains(&status);
        let sh = self.sh;
        let client = &mut self.client;
        match (&sh.fault, len) {
            (Fault::FlipByteInBlobs, Some(len)) if blob_ok && len > 0 => {
                let mut body = vec![0; len as usize];
                up.read_exact(&mut body)?;
                body[len as usize / 2] ^= 0xff;
                client.write_all(&body)
            }
            (Fault::ResetBlobsAfter(n), _)
                if blob_ok && status == 200 && sh.reset_paths.lock().unwrap().insert(self.path.clone()) =>
            {
                let n = *n as u64;
                io::copy(&mut up.take(len.map_or(n, |len| len.min(n))), client)?;
                client.shutdown(Shutdown::Both)
            }
            (_, Some(len)) => io::copy(&mut up.take(len), client).map(drop),
            // Chunked or close-delimited: upstream closes after the body (Connection: close).
            (_, None) => io::copy(up, client).map(drop),
        }
    }
}

/// `/v2/<name>/{manifests,blobs,tags}/...` -> `<name>`; `None` for `/v2/` itself.
fn repo_name(path: &str) -> Option<&str> {
    let path = path.split_once('?').map_or(path, |(path, _query)| path);
    let rest = path.strip_prefix("/v2")?;
    let markers = ["/manifests/", "/blobs/", "/tags/"];
    let end = markers.iter().filter_map(|m| rest.rfind(m)).max()?;
    rest.get(1..end).filter(|name| !name.is_empty())
}

/// `line` (may hold extra header lines), `headers` bar [`DROPPED`] with their values
/// passed through `fix`, then `Connection: close` and the blank line.
fn serialise(line: &str, headers: &[(String, String)], fix: impl Fn(&str) -> String) -> String {
    let mut out = format!("{line}\r\n");
    for (name, value) in headers {
        if !DROPPED.iter().any(|d| d.eq_ignore_ascii_case(name)) {
            out.push_str(&format!("{name}: {}\r\n", fix(value)));
        }
    }
    out + CLOSE
}

fn content_length(head: &Head) -> Option<u64> {
    head.get("content-length")?.trim().parse().ok()
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        let found = self.headers.iter().find(|h| h.0.eq_ignore_ascii_case(name));
        found.map(|(_, value)| value.as_str())
    }

    /// Whether `Authorization` is `<scheme> <value>` (scheme case-insensitive).
    fn has_auth(&self, scheme: &str, value: &str) -> bool {
        let auth = self.get("authorization").and_then(|a| a.split_once(' '));
        auth.is_some_and(|(s, v)| s.eq_ignore_ascii_case(scheme) && v.trim() == value)
    }
}

/// Read a start line and headers up to the blank line; `None` if the peer sent nothing.
fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if r.read_line(&mut header)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if header.trim_end().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    let line = line.trim_end().to_string();
    Ok(Some(Head { line, headers }))
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
        out.push_str(&"=="[chunk.len() - 1..]);
    }
    out
}
