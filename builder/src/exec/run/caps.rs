//! The capabilities a RUN keeps: Docker's default set, so a RUN as root can
//! chown, mknod or bind low ports as in `docker build`, but cannot mount,
//! load modules or read the host through open_by_handle_at. Runs in the
//! sandboxed child: no allocation.

/// Docker's default capabilities (moby `oci/caps/defaults.go`), by number:
/// CHOWN 0, DAC_OVERRIDE 1, FOWNER 3, FSETID 4, KILL 5, SETGID 6, SETUID 7,
/// SETPCAP 8, NET_BIND_SERVICE 10, NET_RAW 13, SYS_CHROOT 18, MKNOD 27,
/// AUDIT_WRITE 29, SETFCAP 31.
pub(crate) const DEFAULT_CAPS: u64 = (1 << 0)
    | (1 << 1)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 7)
    | (1 << 8)
    | (1 << 10)
    | (1 << 13)
    | (1 << 18)
    | (1 << 27)
    | (1 << 29)
    | (1 << 31);

const CAP_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn errno() -> i32 {
    // SAFETY: reading the thread's errno.
    unsafe { *libc::__errno_location() }
}

/// Drops every capability outside [`DEFAULT_CAPS`] from the bounding set.
pub(crate) fn drop_bounding() -> Result<(), i32> {
    for cap in 0..64u64 {
        if DEFAULT_CAPS & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            match errno() {
                libc::EINVAL => break, // past the last capability this kernel knows
                e => return Err(e),
            }
        }
    }
    Ok(())
}

/// Limits the effective, permitted and inheritable sets to [`DEFAULT_CAPS`]
/// (for a RUN that stays root; setuid to another user clears them anyway).
pub(crate) fn limit_to_defaults() -> Result<(), i32> {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capget/capset with a v3 header and two data slots.
    unsafe {
        if libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        ) != 0
        {
            return Err(errno());
        }
        for (i, d) in data.iter_mut().enumerate() {
            let mask = (DEFAULT_CAPS >> (32 * i)) as u32;
            d.effective &= mask;
            d.permitted &= mask;
            d.inheritable = 0;
        }
        if libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        ) != 0
        {
            return Err(errno());
        }
    }
    Ok(())
}
