//! Keeping the agent's resident memory small on devices.
//!
//! The binary carries tract's graph optimiser and kernels for many CPU generations: tens of MB
//! of code, most of which runs only while a model is being loaded. Those pages stay resident
//! (and count against the device's memory) until the kernel needs the memory back. After a
//! load we tell the kernel to reclaim our code pages now; the few that inference uses fault
//! back in from the page cache within microseconds.

/// Asks the kernel to reclaim the executable's clean code and read-only pages.
#[cfg(target_os = "linux")]
pub fn release_code_pages() {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else { return };
    let exe = exe.to_string_lossy().into_owned();
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return };
    for line in maps.lines().filter(|l| l.ends_with(exe.as_str())) {
        let mut parts = line.split_whitespace();
        let (Some(range), Some(perms)) = (parts.next(), parts.next()) else { continue };
        // Writable mappings hold relocated data: paging them out would need swap.
        if perms.as_bytes().get(1) != Some(&b'-') {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else {
            continue;
        };
        // SAFETY: advice on a read-only file mapping of our own executable; it changes which
        // pages are resident, never their contents. Failure (old kernel) is harmless.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_PAGEOUT);
        }
    }
}

/// No-op where the advice does not exist.
#[cfg(not(target_os = "linux"))]
pub fn release_code_pages() {}
