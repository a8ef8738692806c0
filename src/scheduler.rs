//! Which scheduler started us (Slurm, PBS, HTCondor, or none), what to call the container,
//! and which image a site's job wrapper should use.

use std::collections::HashMap;

/// The batch job a container belongs to.
#[derive(Clone, Debug, PartialEq)]
pub enum Job {
    Slurm { job: String, step: Option<String>, rank: Option<String> },
    Pbs { job: String },
    Condor { cluster: String, proc: String },
    None,
}

impl Job {
    /// Read the scheduler's variables from `env` (the process environment in practice).
    pub fn detect(env: &HashMap<String, String>) -> Job {
        let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
        if let Some(job) = get("SLURM_JOB_ID") {
            return Job::Slurm { job, step: get("SLURM_STEP_ID"), rank: get("SLURM_PROCID") };
        }
        if let Some(job) = get("PBS_JOBID") {
            return Job::Pbs { job };
        }
        if let Some(ad) = get("_CONDOR_JOB_AD")
            && let Ok(text) = fs_err::read_to_string(ad)
        {
            let attr = |name: &str| {
                text.lines()
                    .filter_map(|l| l.split_once('='))
                    .find(|(k, _)| k.trim() == name)
                    .map(|(_, v)| v.trim().trim_matches('"').to_string())
            };
            if let (Some(cluster), Some(proc)) = (attr("ClusterId"), attr("ProcId")) {
                return Job::Condor { cluster, proc };
            }
        }
        Job::None
    }

    /// The job's id as the scheduler prints it, if there is a job.
    pub fn id(&self) -> Option<String> {
        match self {
            Job::Slurm { job, .. } | Job::Pbs { job } => Some(job.clone()),
            Job::Condor { cluster, proc } => Some(format!("{cluster}.{proc}")),
            Job::None => None,
        }
    }

    /// The container's default name: `slurm-<job>.<step>.<rank>`, `pbs-<job>`,
    /// `condor-<cluster>.<proc>`, or `boxrun-<random>` outside a scheduler.
    pub fn container_name(&self) -> String {
        let safe = |s: &str| {
            s.chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
                .collect::<String>()
        };
        match self {
            Job::Slurm { job, step, rank } => {
                let step = step.as_deref().unwrap_or("batch");
                let rank = rank.as_deref().unwrap_or("0");
                safe(&format!("slurm-{job}.{step}.{rank}"))
            }
            Job::Pbs { job } => safe(&format!("pbs-{job}")),
            Job::Condor { cluster, proc } => safe(&format!("condor-{cluster}.{proc}")),
            Job::None => format!("boxrun-{:08x}", random_u32()),
        }
    }
}

/// The image a job wrapper should run the job in: `BOXRUN_IMAGE`, else `CONTAINER_IMAGE`
/// (the PBS hook convention); none means the job runs bare.
pub fn wrap_image(env: &HashMap<String, String>) -> Option<String> {
    ["BOXRUN_IMAGE", "CONTAINER_IMAGE"]
        .iter()
        .find_map(|k| env.get(*k).filter(|v| !v.trim().is_empty()).cloned())
}

/// Variables naming the directories MPI launchers share with their ranks: Open MPI's session
/// directory (its shared-memory segments, per-rank files) and the PMIx server's rendezvous and
/// datastore files (mpirun's, or Slurm's `--mpi=pmix` under its spool). They usually sit under
/// /tmp or /var/tmp, which the container makes private, so they are bound back in.
const MPI_DIRECTORIES: [&str; 4] = [
    "OMPI_MCA_orte_top_session_dir",
    "PMIX_SERVER_TMPDIR",
    "PMIX_DSTORE_21_BASE_PATH",
    "PMIX_DSTORE_ESH_BASE_PATH",
];

/// Was this process started as a rank of an MPI job (by mpirun, or srun with PMI or PMIx)?
pub fn is_mpi_rank(env: &HashMap<String, String>) -> bool {
    ["PMIX_RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"].iter().any(|k| env.contains_key(*k))
}

/// The launcher's shared directories that exist, each once (none inside another).
pub fn mpi_directories(env: &HashMap<String, String>) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<std::path::PathBuf> = Vec::new();
    for key in MPI_DIRECTORIES {
        let Some(dir) = env.get(key).map(std::path::PathBuf::from) else { continue };
        let dir: std::path::PathBuf = dir.components().collect(); // drops a trailing or double '/'
        if dir.is_absolute() && dir.is_dir() && !dirs.iter().any(|d| dir.starts_with(d)) {
            dirs.push(dir);
        }
    }
    dirs
}

/// The per-task variables Slurm leaves out of a `--container` step's config.json (one task
/// per node there): `SLURMD_NODENAME` from the runtime's own environment (slurmd's), and
/// `SLURM_NODEID`, `SLURM_PROCID`, `SLURM_LOCALID` from the node's place in the step's node list.
pub fn slurm_task_env(
    runtime_env: &HashMap<String, String>,
    job_env: &[(String, String)],
) -> Vec<(String, String)> {
    let job = |key: &str| job_env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let Some(node) = runtime_env.get("SLURMD_NODENAME").filter(|_| job("SLURM_JOB_ID").is_some()) else {
        return Vec::new();
    };
    let mut env = vec![("SLURMD_NODENAME".to_string(), node.clone())];
    let list = job("SLURM_STEP_NODELIST").or_else(|| job("SLURM_JOB_NODELIST")).unwrap_or("");
    if let Some(index) = expand_hostlist(list).iter().position(|n| n == node) {
        for key in ["SLURM_NODEID", "SLURM_PROCID"] {
            env.push((key.into(), index.to_string()));
        }
        env.push(("SLURM_LOCALID".into(), "0".into()));
    }
    env
}

/// Slurm's compressed host list (`n[1-3,07-08],login`) as names, in order.
pub fn expand_hostlist(list: &str) -> Vec<String> {
    let mut hosts = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in list.char_indices().chain([(list.len(), ',')]) {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                expand_one(&list[start..i], &mut hosts);
                start = i + 1;
            }
            _ => {}
        }
    }
    hosts
}

fn expand_one(item: &str, hosts: &mut Vec<String>) {
    let (Some(open), Some(close)) = (item.find('['), item.find(']')) else {
        if !item.is_empty() {
            hosts.push(item.to_string());
        }
        return;
    };
    let (prefix, ranges, suffix) = (&item[..open], &item[open + 1..close], &item[close + 1..]);
    for range in ranges.split(',') {
        let (low, high) = range.split_once('-').unwrap_or((range, range));
        let (Ok(a), Ok(b)) = (low.parse::<u64>(), high.parse::<u64>()) else { continue };
        for n in a..=b {
            hosts.push(format!("{prefix}{n:0width$}{suffix}", width = low.len()));
        }
    }
}

/// Enough randomness to tell a user's containers apart (not for secrets).
fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn names_follow_the_scheduler() {
        let slurm =
            Job::detect(&env(&[("SLURM_JOB_ID", "42"), ("SLURM_STEP_ID", "3"), ("SLURM_PROCID", "7")]));
        assert_eq!(slurm.container_name(), "slurm-42.3.7");
        assert_eq!(Job::detect(&env(&[("SLURM_JOB_ID", "42")])).container_name(), "slurm-42.batch.0");
        let pbs = Job::detect(&env(&[("PBS_JOBID", "123.server")]));
        assert_eq!(
            (pbs.container_name(), pbs.id()),
            ("pbs-123.server".to_string(), Some("123.server".to_string()))
        );
        assert!(Job::detect(&env(&[])).container_name().starts_with("boxrun-"));
    }

    #[test]
    fn condor_reads_the_job_ad() {
        let dir = tempfile::tempdir().unwrap();
        let ad = dir.path().join(".job.ad");
        fs_err::write(&ad, "ClusterId = 17\nProcId = 2\nOwner = \"alice\"\n").unwrap();
        let job = Job::detect(&env(&[("_CONDOR_JOB_AD", ad.to_str().unwrap())]));
        assert_eq!(job.container_name(), "condor-17.2");
    }

    #[test]
    fn hostlists_expand_and_give_the_task_its_rank() {
        assert_eq!(expand_hostlist("n[1-2,05-06],login"), ["n1", "n2", "n05", "n06", "login"]);
        assert_eq!(expand_hostlist("vm"), ["vm"]);
        let job =
            [("SLURM_JOB_ID".to_string(), "4".to_string()), ("SLURM_STEP_NODELIST".into(), "n[1-2]".into())];
        let task = slurm_task_env(&env(&[("SLURMD_NODENAME", "n2")]), &job);
        assert!(task.contains(&("SLURM_PROCID".into(), "1".into())), "{task:?}");
        assert!(slurm_task_env(&env(&[("SLURMD_NODENAME", "n2")]), &[]).is_empty(), "not a Slurm job");
    }

    #[test]
    fn wrapper_image_prefers_boxrun_image() {
        assert_eq!(wrap_image(&env(&[("CONTAINER_IMAGE", "a"), ("BOXRUN_IMAGE", "b")])), Some("b".into()));
        assert_eq!(wrap_image(&env(&[("CONTAINER_IMAGE", "a")])), Some("a".into()));
        assert_eq!(wrap_image(&env(&[("BOXRUN_IMAGE", " ")])), None);
    }
}
