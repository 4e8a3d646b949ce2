//! Network namespaces a test makes and removes: hosts of their own (routers, L4 nodes,
//! clients) joined by veth pairs and bridges, with addresses that exist only inside them.
//! A process started from [`Netns::enter`] lives in the namespace, as does a socket made
//! there.

use std::process::Command;

/// Runs `ip` with these arguments in the test's own namespace; panics with its output if it
/// fails.
pub fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Whether this test process may make namespaces (root, with `ip netns`).
pub fn available() -> bool {
    let name = format!("mer-probe-{}", std::process::id());
    let made = Command::new("ip")
        .args(["netns", "add", &name])
        .output()
        .is_ok_and(|o| o.status.success());
    if made {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
    }
    made
}

/// A namespace, deleted on drop (with the interfaces in it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `mer-<pid>-<role>`, with its loopback up.
    pub fn new(role: &str) -> Netns {
        let name = format!("mer-{}-{role}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let netns = Netns { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// `ip <args>` inside the namespace.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name, "ip"];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Sets a sysctl inside the namespace (`net.ipv4.ip_forward` → its /proc/sys file).
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.enter(|| std::fs::write(&path, value))
            .unwrap_or_else(|e| panic!("{path} in {}: {e}", self.name));
    }

    /// Runs `f` on a thread inside the namespace: sockets it makes and processes it starts
    /// are the namespace's.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = std::fs::File::open(&path).expect("open the namespace");
                    // SAFETY: setns on this thread only, with a namespace file we hold open.
                    let entered = unsafe {
                        libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET)
                    };
                    assert_eq!(
                        entered,
                        0,
                        "setns {path}: {}",
                        std::io::Error::last_os_error()
                    );
                    f()
                })
                .join()
                .expect("the thread in the namespace")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A veth pair joining `a` (interface `a_name`, address `a_address` with prefix) and `b`.
pub fn link(
    a: &Netns,
    a_name: &str,
    a_address: &str,
    b: &Netns,
    b_name: &str,
    b_address: Option<&str>,
) {
    let (left, right) = (
        format!("m{}{a_name}", std::process::id() % 100_000),
        format!("m{}{b_name}", std::process::id() % 100_000),
    );
    ip(&["link", "add", &left, "type", "veth", "peer", "name", &right]);
    ip(&["link", "set", &left, "netns", &a.name]);
    ip(&["link", "set", &right, "netns", &b.name]);
    a.ip(&["link", "set", &left, "name", a_name]);
    b.ip(&["link", "set", &right, "name", b_name]);
    a.ip(&["addr", "add", a_address, "dev", a_name]);
    a.ip(&["link", "set", a_name, "up"]);
    if let Some(address) = b_address {
        b.ip(&["addr", "add", address, "dev", b_name]);
    }
    b.ip(&["link", "set", b_name, "up"]);
}

/// A process (started inside a namespace with [`Netns::enter`]), killed on drop; its output
/// goes to `log`.
pub struct Daemon {
    child: std::process::Child,
    pub log: std::path::PathBuf,
}

impl Daemon {
    pub fn spawn(netns: &Netns, log: std::path::PathBuf, program: &str, args: &[&str]) -> Daemon {
        let file = std::fs::File::create(&log).unwrap();
        let child = netns.enter(|| {
            Command::new(program)
                .args(args)
                .env("RUST_LOG", "info")
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .unwrap_or_else(|e| panic!("start {program} in {}: {e}", netns.name))
        });
        Daemon { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on a new connection to `address` from inside the calling thread's namespace,
/// with `Connection: close`: the status and body.
pub fn http_get(
    address: std::net::SocketAddr,
    host: &str,
    path: &str,
) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(3);
    let mut stream =
        std::net::TcpStream::connect_timeout(&address, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response).to_string();
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no whole response")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    Ok((status, body.to_owned()))
}
