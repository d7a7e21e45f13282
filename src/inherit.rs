//! Listening sockets handed to the relay by whoever started it, systemd
//! style (`sd_listen_fds(3)`): `LISTEN_PID` (must be this process),
//! `LISTEN_FDS` (how many, from fd 3 on) and optionally `LISTEN_FDNAMES`
//! (`:`-separated: `listen`, `listen-tls`, `admin`). Without names the fds
//! are, in order, `listen`, then `listen-tls` and `admin` if configured.
//!
//! This is how a relay is upgraded without dropping a viewer: the socket
//! belongs to the service manager (a systemd `.socket` unit, or any parent
//! process), so the old and the new relay accept from the *same* socket and
//! the same accept queue. The new one starts accepting, the old one gets
//! SIGTERM, keeps accepting for `--drain-delay`, closes its copy of the fd
//! and drains; the socket itself never closes, so no connection waiting in
//! its queue is reset. (Two sockets bound with `SO_REUSEPORT` would each
//! have a queue of their own, and the connections queued on the old one when
//! it closes are reset, unless the kernel's `tcp_migrate_req` is on.)

use std::net::TcpListener as StdListener;
use std::os::fd::FromRawFd;

use tokio::net::TcpListener;

/// Most sockets a starter may pass: the three roles, with room for a few
/// named ones this relay closes.
const MAX_FDS: i32 = 16;

/// Whether `fd` is open and a listening TCP socket, without taking it.
fn check_listening_tcp(fd: i32) -> std::io::Result<()> {
    let opt = |level, name| -> std::io::Result<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `v`; on a bad
        // or non-socket fd it fails with an errno and writes nothing.
        let r = unsafe {
            libc::getsockopt(
                fd,
                level,
                name,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if r == 0 {
            Ok(v)
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_string());
    let domain = opt(libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return Err(bad("not an IPv4 or IPv6 socket"));
    }
    if opt(libc::SOL_SOCKET, libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err(bad("not a TCP socket"));
    }
    if opt(libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? == 0 {
        return Err(bad("not listening"));
    }
    Ok(())
}

/// The first fd passed (`SD_LISTEN_FDS_START`).
const FIRST_FD: i32 = 3;

/// Sockets inherited by role.
#[derive(Default)]
pub struct Inherited {
    /// The viewer listener (`--listen`).
    pub listen: Option<TcpListener>,
    /// The TLS viewer listener (`--listen-tls`).
    pub listen_tls: Option<TcpListener>,
    /// The admin listener (`--admin`).
    pub admin: Option<TcpListener>,
}

impl Inherited {
    /// Takes the sockets passed to this process, if any, and unsets the
    /// variables (they describe this process only). `has_tls` and
    /// `has_admin` say which roles unnamed fds fill after `listen`.
    pub fn take(has_tls: bool, has_admin: bool) -> std::io::Result<Inherited> {
        let pid = std::env::var("LISTEN_PID").ok();
        let fds = std::env::var("LISTEN_FDS").ok();
        let names = std::env::var("LISTEN_FDNAMES").ok();
        for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            std::env::remove_var(v);
        }
        let ours = pid.and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
        let n: i32 = match fds.and_then(|n| n.parse().ok()) {
            Some(n) if ours && n > 0 => n,
            _ => return Ok(Inherited::default()),
        };
        if n > MAX_FDS {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("LISTEN_FDS={n}: a relay takes at most {MAX_FDS} sockets (listen, listen-tls, admin)"),
            ));
        }
        let mut roles: Vec<String> = match names {
            Some(names) if !names.is_empty() => names.split(':').map(str::to_string).collect(),
            _ => {
                let mut r = vec!["listen".to_string()];
                if has_tls {
                    r.push("listen-tls".into());
                }
                if has_admin {
                    r.push("admin".into());
                }
                r
            }
        };
        roles.resize(n as usize, String::new());
        let mut got = Inherited::default();
        for (i, role) in roles.iter().enumerate() {
            let fd = FIRST_FD + i as i32;
            let what = |e: std::io::Error| {
                std::io::Error::new(
                    e.kind(),
                    format!("inherited fd {fd} (LISTEN_FDS, role {role:?}): {e}"),
                )
            };
            check_listening_tcp(fd).map_err(what)?;
            // SAFETY: the starter passed fds FIRST_FD..FIRST_FD+n to this
            // process for it to own (sd_listen_fds), and the check above
            // found this one open and a listening TCP socket; each is taken
            // once.
            let std = unsafe { StdListener::from_raw_fd(fd) };
            std.set_nonblocking(true).map_err(what)?;
            let l = TcpListener::from_std(std).map_err(what)?;
            let slot = match role.as_str() {
                "listen" | "viewers" => &mut got.listen,
                "listen-tls" | "tls" => &mut got.listen_tls,
                "admin" => &mut got.admin,
                other => {
                    tracing::warn!(
                        fd,
                        name = other,
                        "inherited socket with an unknown name: closed"
                    );
                    continue;
                }
            };
            tracing::info!(fd, role = %role, addr = ?l.local_addr().ok(), "using an inherited listening socket");
            *slot = Some(l);
        }
        Ok(got)
    }

    /// Whether nothing was inherited.
    pub fn is_empty(&self) -> bool {
        self.listen.is_none() && self.listen_tls.is_none() && self.admin.is_none()
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::check_listening_tcp;

    #[test]
    fn only_an_open_listening_tcp_socket_passes() {
        let listening = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(check_listening_tcp(listening.as_raw_fd()).is_ok());
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = check_listening_tcp(udp.as_raw_fd()).unwrap_err();
        assert!(e.to_string().contains("not a TCP socket"), "{e}");
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert!(check_listening_tcp(file.as_raw_fd()).is_err());
        // Not open: a number above any descriptor this process has (a
        // just-closed one could be reused meanwhile by a parallel test's
        // listener).
        assert!(check_listening_tcp(1 << 30).is_err());
    }
}
