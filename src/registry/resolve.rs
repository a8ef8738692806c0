//! Host names, resolved by the host's own resolver through `getent ahosts`.
//!
//! boxrun is linked statically, and a static glibc's `getaddrinfo` would `dlopen` the NSS
//! modules that nsswitch.conf names for hosts (mdns, resolve, myhostname) into boxrun, which
//! glibc does not support (see [`crate::accounts`]). `getent` is the host's own tool: it
//! resolves a registry's name exactly as curl or docker on that host would. A pull resolves a
//! few names, each once per connection, so its exec (about 1 ms) does not show. Where the host
//! has no getent, std's resolver (the files and DNS that glibc has built in) answers.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::process::{Command, Stdio};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// reqwest's resolver for every registry connection.
pub struct HostResolver;

impl Resolve for HostResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // A blocking exec: off the runtime's thread, as reqwest's own resolver does.
            let addresses = tokio::task::spawn_blocking(move || lookup(&host)).await??;
            Ok(Box::new(addresses.into_iter()) as Addrs)
        })
    }
}

fn lookup(host: &str) -> Result<Vec<SocketAddr>, BoxError> {
    match Command::new(crate::accounts::GETENT).args(["ahosts", host]).stdin(Stdio::null()).output() {
        Ok(output) if output.status.success() => {
            let addresses = parse_ahosts(&String::from_utf8_lossy(&output.stdout));
            if addresses.is_empty() {
                Err(format!("{host}: getent ahosts gave no address").into())
            } else {
                Ok(addresses)
            }
        }
        // Exit status 2: the resolver knows no such name (or its servers did not answer).
        Ok(_) => Err(format!("cannot resolve {host}: no such host").into()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok((host, 0).to_socket_addrs()?.collect()),
        Err(e) => Err(format!("cannot run getent to resolve {host}: {e}").into()),
    }
}

/// The addresses of `getent ahosts` output (`ADDRESS SOCKTYPE [NAME]`, each address once per
/// socket type), in its order, each once.
fn parse_ahosts(text: &str) -> Vec<SocketAddr> {
    let mut addresses: Vec<SocketAddr> = Vec::new();
    for line in text.lines() {
        let Some(Ok(ip)) = line.split_whitespace().next().map(str::parse::<IpAddr>) else {
            continue;
        };
        let address = SocketAddr::new(ip, 0);
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    addresses
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ahosts_output_gives_each_address_once_in_order() {
        let text = "::1             STREAM localhost\n::1             DGRAM  \n::1             RAW    \n\
                    127.0.0.1       STREAM \n127.0.0.1       DGRAM  \n\n";
        let expected: Vec<SocketAddr> = vec!["[::1]:0".parse().unwrap(), "127.0.0.1:0".parse().unwrap()];
        assert_eq!(parse_ahosts(text), expected);
    }

    #[test]
    fn the_hosts_resolver_answers_for_localhost_and_fails_for_a_reserved_name() {
        let localhost = lookup("localhost").unwrap();
        assert!(localhost.iter().all(|a| a.ip().is_loopback()) && !localhost.is_empty(), "{localhost:?}");
        let error = lookup("no-such-registry.invalid").unwrap_err().to_string();
        assert!(error.contains("no-such-registry.invalid"), "{error}");
    }
}
