//! `boxrun run --security-report IMAGE`: what an admin checks, read from inside the container
//! by a process locked down exactly as the job would be.

/// Print the report to stdout.
pub fn print() {
    let read = |path: &str| fs_err::read_to_string(path).unwrap_or_else(|e| format!("({e})\n"));
    println!("boxrun security report (from inside the container)");
    let status = read("/proc/self/status");
    for key in [
        "Uid",
        "Gid",
        "CapInh",
        "CapPrm",
        "CapEff",
        "CapBnd",
        "CapAmb",
        "NoNewPrivs",
        "Seccomp",
        "Seccomp_filters",
    ] {
        if let Some(line) = status.lines().find(|l| l.split(':').next() == Some(key)) {
            println!("{line}");
        }
    }
    println!("uid_map: {}", read("/proc/self/uid_map").trim());
    println!("gid_map: {}", read("/proc/self/gid_map").trim());
    println!("setgroups: {}", read("/proc/self/setgroups").trim());
    println!("mounts (mount point, type, flags):");
    for line in read("/proc/self/mountinfo").lines() {
        // mountinfo(5): ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ... - TYPE SOURCE SUPER
        let fields: Vec<&str> = line.split_whitespace().collect();
        let fs_type = fields.iter().position(|f| *f == "-").and_then(|i| fields.get(i + 1));
        if let (Some(point), Some(options), Some(fs_type)) = (fields.get(4), fields.get(5), fs_type) {
            println!("  {point} {fs_type} {options}");
        }
    }
}
