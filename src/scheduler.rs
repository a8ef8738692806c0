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
    fn wrapper_image_prefers_boxrun_image() {
        assert_eq!(wrap_image(&env(&[("CONTAINER_IMAGE", "a"), ("BOXRUN_IMAGE", "b")])), Some("b".into()));
        assert_eq!(wrap_image(&env(&[("CONTAINER_IMAGE", "a")])), Some("a".into()));
        assert_eq!(wrap_image(&env(&[("BOXRUN_IMAGE", " ")])), None);
    }
}
