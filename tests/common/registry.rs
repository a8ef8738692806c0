//! The tests' registry: Debian's `docker-registry` on 127.0.0.1 on a free port, plain or TLS +
//! htpasswd with a CA generated here, killed when the test drops it (and by the kernel if the
//! test dies); images pushed into it by skopeo.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use super::{REGISTRY_PASSWORD, REGISTRY_USER, die_with_parent, images, mpi_images, require_tool, run_ok};

/// A CA and a server certificate for 127.0.0.1 and localhost, made once per process.
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn tls() -> &'static Tls {
    static TLS: OnceLock<Tls> = OnceLock::new();
    TLS.get_or_init(|| {
        require_tool("openssl", "openssl");
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("tls.{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let openssl = |args: &[&str]| run_ok(Command::new("openssl").args(args).current_dir(&dir));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=boxrun test CA",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        let ca = dir.join("ca.pem");
        std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644)).unwrap();
        Tls { ca, cert: dir.join("server.pem"), key: dir.join("server.key") }
    })
}

/// A running `docker-registry` on 127.0.0.1; killed on drop.
pub struct Registry {
    child: Child,
    pub addr: SocketAddr,
    pub tls: bool,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// A plain-HTTP registry.
    pub fn start() -> Registry {
        Registry::launch(false)
    }

    /// A TLS registry (see [`tls`]) that wants Basic auth as `REGISTRY_USER`.
    pub fn start_tls_auth() -> Registry {
        Registry::launch(true)
    }

    fn launch(secure: bool) -> Registry {
        require_tool("docker-registry", "docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if secure {
            require_tool("htpasswd", "apache2-utils");
            let tls = tls();
            let htpasswd = run_ok(Command::new("htpasswd").args(["-Bbn", REGISTRY_USER, REGISTRY_PASSWORD]));
            std::fs::write(dir.path().join("htpasswd"), &htpasswd.stdout).unwrap();
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: boxrun-test\n    path: {}\n",
                tls.cert.display(),
                tls.key.display(),
                dir.path().join("htpasswd").display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let mut command = Command::new("docker-registry");
        command.arg("serve").arg(&config_path).stdout(Stdio::null()).stderr(Stdio::piped());
        die_with_parent(&mut command);
        let mut child = command.spawn().expect("start docker-registry");
        let log = Arc::new(Mutex::new(Vec::new()));
        wait_until_listening(&mut child, &log);
        Registry { child, addr, tls: secure, log, _dir: dir }
    }

    /// `127.0.0.1:PORT`, as written in image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Push `images/<image>` as `<name>:latest` with skopeo; the manifest digest it pushed.
    pub fn push(&self, image: &str, name: &str) -> String {
        require_tool("skopeo", "skopeo");
        let digest_file = tempfile::NamedTempFile::new().unwrap();
        let mut command = Command::new("skopeo");
        command.args(["copy", "--quiet", "--all", "--dest-tls-verify=false", "--digestfile"]);
        command.arg(digest_file.path());
        if self.tls {
            command.args(["--dest-creds", &format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}")]);
        }
        // skopeo reads only OCI media types from a layout, so the Docker-schema2 image is made
        // by converting `tiny` on the way (byte-identical to images/tiny-docker). Every other
        // image goes up unchanged: without --preserve-digests skopeo would gzip plain layers.
        let source = match image {
            "tiny-docker" => {
                command.args(["--format", "v2s2"]);
                "tiny"
            }
            _ => {
                command.arg("--preserve-digests");
                image
            }
        };
        let layouts = if image == "mpi" { mpi_images() } else { images() };
        command.arg(format!("oci:{}:latest", layouts.join(source).display()));
        command.arg(format!("docker://{}/{name}:latest", self.host()));
        run_ok(&mut command);
        std::fs::read_to_string(digest_file.path()).unwrap().trim().to_string()
    }

    /// A user config that points boxrun at this registry (the CA for TLS).
    pub fn config_toml(&self) -> String {
        if self.tls {
            format!("[registries.\"{}\"]\nca_file = \"{}\"\n", self.host(), tls().ca.display())
        } else {
            String::new()
        }
    }
}

/// Read the registry's log until it says it is listening, then keep collecting it.
fn wait_until_listening(child: &mut Child, log: &Arc<Mutex<Vec<String>>>) {
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let ready = line.contains("listening on");
        log.lock().unwrap().push(line);
        if ready {
            let log = Arc::clone(log);
            std::thread::spawn(move || {
                for line in lines.map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
            return;
        }
    }
    panic!("docker-registry exited before listening:\n{}", log.lock().unwrap().join("\n"));
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
