//! The kernel's statistics of each attached program: runs and run time
//! (while `kernel.bpf_stats_enabled` is 1) and recursion misses (always):
//! a program the kernel skipped because another program was already running
//! on that CPU (a preempted fentry program, say) did not count its event.
//!
//! aya 0.14 does not expose `recursion_misses`, so `bpf_prog_info` is read
//! here with `BPF_OBJ_GET_INFO_BY_FD`; only the fields up to
//! `recursion_misses` are asked for (the struct only ever grows, and an
//! older kernel leaves the fields it lacks at zero: 5.12 added it).

use std::{
    io,
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd as _},
};

use super::Probes;

/// `BPF_OBJ_GET_INFO_BY_FD` of `enum bpf_cmd`.
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// The prefix of `struct bpf_prog_info` (include/uapi/linux/bpf.h) up to
/// `recursion_misses`.
#[repr(C)]
#[derive(Default)]
struct ProgInfo {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
    ifindex: u32,
    gpl_compatible: u32,
    netns_dev: u64,
    netns_ino: u64,
    nr_jited_ksyms: u32,
    nr_jited_func_lens: u32,
    jited_ksyms: u64,
    jited_func_lens: u64,
    btf_id: u32,
    func_info_rec_size: u32,
    func_info: u64,
    nr_func_info: u32,
    nr_line_info: u32,
    line_info: u64,
    jited_line_info: u64,
    nr_jited_line_info: u32,
    line_info_rec_size: u32,
    jited_line_info_rec_size: u32,
    nr_prog_tags: u32,
    prog_tags: u64,
    run_time_ns: u64,
    run_cnt: u64,
    recursion_misses: u64,
}

/// The `info` member of `union bpf_attr`.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// What the kernel reports about one attached program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramStats {
    pub name: &'static str,
    /// Where it is attached (`fentry:do_madvise`, ...).
    pub attach_point: String,
    /// The kernel's program type (`bpf_prog_type`): tests use it to prove
    /// which kinds of programs a plan holds.
    pub program_type: u32,
    /// Runs and total run time: only counted while bpf_stats is enabled.
    pub runs: u64,
    pub run_time_ns: u64,
    /// Runs the kernel skipped (recursion protection): their events were
    /// not counted.
    pub recursion_misses: u64,
}

fn prog_info(fd: i32) -> io::Result<ProgInfo> {
    let mut info = ProgInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: u32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        info_len: size_of::<ProgInfo>() as u32,
        info: (&raw mut info) as u64,
    };
    // SAFETY: `attr` and `info` outlive the call and have the layout the
    // kernel expects for the lengths given.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &raw mut attr, size_of::<InfoAttr>() as libc::c_uint)
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

impl Probes {
    /// The kernel's statistics of every attached program; a program whose
    /// information cannot be read is left out (and logged at debug level).
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        self.attached()
            .iter()
            .filter_map(|(name, attach_point)| {
                let program = self.object().program(name)?;
                let read = program.fd().map_err(io::Error::other).and_then(|fd| prog_info(fd.as_fd().as_raw_fd()));
                match read {
                    Ok(info) => Some(ProgramStats {
                        name,
                        attach_point: attach_point.clone(),
                        program_type: info.prog_type,
                        runs: info.run_cnt,
                        run_time_ns: info.run_time_ns,
                        recursion_misses: info.recursion_misses,
                    }),
                    Err(err) => {
                        tracing::debug!(program = name, error = %err, "reading program info failed");
                        None
                    }
                }
            })
            .collect()
    }
}
