//! `--net`: a network namespace whose only interface is loopback, brought up.

use std::io;

/// `ip link set lo up`, with the ioctls it uses (netdevice(7)).
pub fn loopback_up() -> Result<(), String> {
    let fail = |what: &str| format!("cannot bring up loopback ({what}): {}", io::Error::last_os_error());
    // SAFETY: a plain socket(2) call; the fd is closed below on every path.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket < 0 {
        return Err(fail("socket"));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value for it.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own and pass by pointer.
    let result = unsafe {
        if libc::ioctl(socket, libc::SIOCGIFFLAGS as _, &mut request) < 0 {
            Err(fail("SIOCGIFFLAGS"))
        } else {
            request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if libc::ioctl(socket, libc::SIOCSIFFLAGS as _, &request) < 0 {
                Err(fail("SIOCSIFFLAGS"))
            } else {
                Ok(())
            }
        }
    };
    // SAFETY: `socket` is ours and not used after this.
    unsafe { libc::close(socket) };
    result
}
