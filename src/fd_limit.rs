//! File descriptors: every open connection holds one, and so do the store's files and the
//! calls flowhook makes. Systemd and many shells start services with a soft limit of 1,024,
//! far below the hard limit; at start flowhook raises the soft limit to the hard one, and sizes
//! its connection cap from what it got.

/// Descriptors kept for everything but inbound connections: the store's files, outbound
/// calls, logs, the listener.
pub const RESERVED: u64 = 256;

/// The soft and hard `RLIMIT_NOFILE` before and after raising the soft one to the hard one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    pub before: u64,
    pub now: u64,
    pub hard: u64,
}

/// The soft and hard limits on open files.
pub fn current() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Raises the soft limit on open files to the hard limit. `Err` with the OS error when the
/// limits cannot be read or set (flowhook then runs with what it has).
pub fn raise() -> std::io::Result<Raised> {
    let (before, hard) = current()?;
    if before < hard {
        let raised = libc::rlimit {
            rlim_cur: hard,
            rlim_max: hard,
        };
        // SAFETY: `raised` is a valid rlimit; raising the soft limit up to the hard one needs
        // no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(Raised {
        before,
        now: hard,
        hard,
    })
}

/// The cap on open inbound connections when `server.max_connections` is 0: what the soft
/// limit leaves after [`RESERVED`], at least 64.
pub fn connection_cap(soft_limit: u64) -> usize {
    soft_limit.saturating_sub(RESERVED).max(64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_reaches_the_hard_limit_and_is_repeatable() {
        let first = raise().unwrap();
        assert_eq!(first.now, first.hard);
        let again = raise().unwrap();
        assert_eq!((again.before, again.now), (first.now, first.now));
    }

    #[test]
    fn the_cap_leaves_room_for_the_store_and_outbound_calls() {
        assert_eq!(connection_cap(1024), 768);
        assert_eq!(connection_cap(100), 64);
    }
}
