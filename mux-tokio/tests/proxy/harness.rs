//! Real reverse proxies as child processes, for the proxy tests and the load tool's scale
//! run: nginx or HAProxy, run from the configs in `deploy/` with their placeholders filled
//! in, on a free loopback port, with every file of theirs in a temporary directory, stopped
//! on drop. Only the standard library, so that `benches/load` can include this file too.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Which proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// nginx, from `deploy/nginx.conf` (a site file, wrapped in a minimal nginx.conf).
    Nginx,
    /// HAProxy, from `deploy/haproxy.cfg` (a complete configuration).
    Haproxy,
}

impl Kind {
    fn binary(self) -> &'static str {
        match self {
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
        }
    }

    fn template(self) -> &'static str {
        match self {
            Kind::Nginx => "nginx.conf",
            Kind::Haproxy => "haproxy.cfg",
        }
    }
}

/// What to run the proxy with.
#[derive(Debug, Clone)]
pub struct Options {
    /// The two mux nodes behind it (`{{NODE_A}}`, `{{NODE_B}}`).
    pub nodes: [SocketAddr; 2],
    /// The server certificate chain and its key, PEM.
    pub cert_pem: String,
    /// The key of `cert_pem`, PEM.
    pub key_pem: String,
    /// Exact text replacements applied after the placeholders (shorter timeouts, say);
    /// each `from` must occur exactly once in the file.
    pub overrides: Vec<(String, String)>,
    /// Connections the proxy may hold at once, both sides counted (a proxied client is
    /// two: nginx's `worker_connections`, HAProxy's `maxconn` counts clients only).
    pub max_connections: usize,
}

/// A running proxy; stopped and its directory removed on drop.
pub struct Proxy {
    child: Child,
    dir: PathBuf,
    /// Where it listens (127.0.0.1).
    pub addr: SocketAddr,
    /// Which proxy it is.
    pub kind: Kind,
}

/// The path of an executable named `name`: on `PATH` or in the sbin directories (where
/// Debian installs nginx and HAProxy, which a non-login shell's `PATH` may lack).
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A loopback port nobody listens on now (the proxy binds it a moment later).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind a probe port");
    listener.local_addr().expect("local addr").port()
}

/// A fresh directory under the system temporary directory.
fn temp_dir(what: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("mux-{what}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    dir
}

/// `template` with every placeholder of `vars` filled in and then every override applied;
/// panics if a placeholder is left or an override does not match exactly once.
pub fn render(template: &str, vars: &[(&str, String)], overrides: &[(String, String)]) -> String {
    let mut text = template.to_owned();
    for (name, value) in vars {
        text = text.replace(&format!("{{{{{name}}}}}"), value);
    }
    for (from, to) in overrides {
        let found = text.matches(from.as_str()).count();
        assert_eq!(
            found, 1,
            "override {from:?} matches {found} times, not once"
        );
        text = text.replace(from.as_str(), to);
    }
    let left = text.split("{{").skip(1).find_map(|rest| {
        let name = rest.split("}}").next()?;
        let is_name = !name.is_empty() && name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_');
        is_name.then_some(name)
    });
    if let Some(name) = left {
        panic!("the placeholder {{{{{name}}}}} is left unfilled");
    }
    text
}

impl Proxy {
    /// Starts `kind` from `deploy_dir`'s config and waits until it accepts connections.
    /// Panics with the Debian package to install when the binary is missing, and with the
    /// proxy's own log when it does not start.
    pub fn start(kind: Kind, deploy_dir: &Path, options: &Options) -> Proxy {
        let binary = find_binary(kind.binary()).unwrap_or_else(|| {
            panic!(
                "{} not found on PATH or in /usr/sbin: install Debian's `{}` package \
                 (apt-get install -y {}); .ci/run installs it when missing",
                kind.binary(),
                kind.binary(),
                kind.binary()
            )
        });
        let template_path = deploy_dir.join(kind.template());
        let template = std::fs::read_to_string(&template_path)
            .unwrap_or_else(|e| panic!("read {}: {e}", template_path.display()));
        let dir = temp_dir(kind.binary());
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write a proxy file");
            path.display().to_string()
        };
        let cert = write("tls.crt", &options.cert_pem);
        let key = write("tls.key", &options.key_pem);
        let pem = write(
            "tls.pem",
            &format!("{}\n{}", options.cert_pem, options.key_pem),
        );
        let [node_a, node_b] = options.nodes;
        let vars = [
            ("LISTEN", addr.to_string()),
            ("NODE_A", node_a.to_string()),
            ("NODE_B", node_b.to_string()),
            ("SERVER_NAME", "localhost".to_owned()),
            ("TLS_CERT", cert),
            ("TLS_KEY", key),
            ("TLS_PEM", pem),
        ];
        let mut overrides = options.overrides.clone();
        if kind == Kind::Haproxy {
            // HAProxy sizes its file limit from maxconn: the deployed value needs a proxy
            // host's limit, these runs get what they need.
            overrides.push((
                "    maxconn 20000".to_owned(),
                format!("    maxconn {}", options.max_connections.max(64)),
            ));
        }
        let config = render(&template, &vars, &overrides);
        let log = std::fs::File::create(dir.join("output.log")).expect("create the proxy log");
        let mut command = Command::new(&binary);
        match kind {
            Kind::Nginx => {
                let site = write("mux.conf", &config);
                let main = write("nginx.conf", &nginx_main(&dir, &site, options));
                let error_log = dir.join("error.log").display().to_string();
                command
                    .args(["-e", &error_log, "-p"])
                    .arg(&dir)
                    .args(["-c", &main]);
            }
            Kind::Haproxy => {
                let main = write("haproxy.cfg", &config);
                command.args(["-db", "-f", &main]);
            }
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
        let mut proxy = Proxy {
            child,
            dir,
            addr,
            kind,
        };
        proxy.wait_listening();
        proxy
    }

    /// Waits until the proxy accepts TCP connections, giving up after 500 attempts (at
    /// least 10 s: each waits 20 ms or a refused connect).
    fn wait_listening(&mut self) {
        for _ in 0..500 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{:?} exited at start ({status}):\n{}",
                    self.kind,
                    self.log()
                );
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{:?} did not listen on {} after 500 attempts:\n{}",
            self.kind,
            self.addr,
            self.log()
        );
    }

    /// What the proxy wrote to its output and error log, for failure messages.
    pub fn log(&self) -> String {
        ["output.log", "error.log"]
            .iter()
            .filter_map(|name| std::fs::read_to_string(self.dir.join(name)).ok())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `wss://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("wss://{}/", self.addr)
    }

    /// The proxy's pid (for its RSS and CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // nginx runs without a master process and HAProxy in the foreground, so the one
        // process is the whole proxy.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The test's nginx.conf around the site file: one process in the foreground, every path
/// in `dir`, room for `max_connections` connections.
fn nginx_main(dir: &Path, site: &str, options: &Options) -> String {
    let d = dir.display();
    let connections = options.max_connections.max(64);
    let files = connections.saturating_add(64);
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nworker_rlimit_nofile {files};\n\
         pid {d}/nginx.pid;\nerror_log {d}/error.log notice;\n\
         events {{ worker_connections {connections}; }}\n\
         http {{\n    access_log off;\n\
             client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n\
             scgi_temp_path {d}/scgi;\n    include {site};\n}}\n"
    )
}
