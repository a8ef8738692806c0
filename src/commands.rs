//! One function per subcommand: settings in, the library called, results printed on stdout.

use std::io::Write;

use crate::Error;
use crate::cli::{Command, GcArgs, ImagesArgs, KillArgs, PsArgs, PullArgs, RmiArgs};
use crate::config::Settings;
use crate::platform::Platform;
use crate::progress::{self, Progress, human_bytes};
use crate::pull::{PullOptions, pull};
use crate::reference::Reference;
use crate::rootfs;
use crate::store::Store;

/// Run one subcommand; the exit status on success.
pub fn dispatch(command: Command) -> Result<i32, Error> {
    // These need no settings and no cache.
    let command = match command {
        Command::Init { plan_fd } => crate::init::main(plan_fd),
        Command::Ps(args) => return ps_command(args),
        Command::Kill(args) => return kill_command(args),
        Command::Oci(args) => return crate::oci::dispatch(args),
        other => other,
    };
    let settings = Settings::load()?;
    let store = Store::open(&settings.cache_dir, &settings.data_dir)?;
    match command {
        Command::Run(args) => crate::run::run(&settings, &store, *args),
        Command::Init { .. } | Command::Ps(_) | Command::Kill(_) | Command::Oci(_) => {
            unreachable!("handled above")
        }
        Command::Pull(args) => pull_command(&settings, &store, args),
        Command::Images(args) => images_command(&store, args),
        Command::Rmi(args) => rmi_command(&settings, &store, args),
        Command::Gc(args) => gc_command(&store, args),
        Command::Wrap(args) => crate::run::wrap(&settings, &store, args),
    }
}

fn pull_command(settings: &Settings, store: &Store, args: PullArgs) -> Result<i32, Error> {
    let reference = Reference::parse(&args.image, &settings.default_registry)?;
    let platform = args.platform.as_deref().map(Platform::parse).transpose()?;
    let progress = Progress::new(progress::Mode::detect(args.quiet));
    let options = PullOptions { platform, offline: args.offline };
    let record = pull(settings, store, &reference, &options, &progress)?;
    if !args.no_unpack {
        rootfs::ensure(store, &record, &progress)?;
    }
    if !args.quiet {
        let layers = match record.layers.len() {
            1 => "1 layer".to_string(),
            n => format!("{n} layers"),
        };
        progress.note(&format!(
            "{}: {} ({}, {layers}, {})",
            record.reference,
            record.manifest,
            record.platform,
            human_bytes(record.size)
        ));
    }
    print(format_args!("{}\n", record.manifest));
    Ok(0)
}

fn images_command(store: &Store, args: ImagesArgs) -> Result<i32, Error> {
    let records: Vec<_> = store.records()?.into_iter().map(|(_, record)| record).collect();
    if args.json {
        let json = serde_json::to_string_pretty(&records).expect("records always serialise");
        print(format_args!("{json}\n"));
        return Ok(0);
    }
    let mut table = format!("{:<50} {:<16} {:<14} {:>10}\n", "IMAGE", "PLATFORM", "ID", "SIZE");
    for record in &records {
        table.push_str(&format!(
            "{:<50} {:<16} {:<14} {:>10}\n",
            record.reference,
            record.platform.to_string(),
            record.manifest.short(),
            human_bytes(record.size)
        ));
    }
    print(format_args!("{table}"));
    Ok(0)
}

fn rmi_command(settings: &Settings, store: &Store, args: RmiArgs) -> Result<i32, Error> {
    let references = args
        .images
        .iter()
        .map(|image| Reference::parse(image, &settings.default_registry))
        .collect::<Result<Vec<_>, _>>()?;
    {
        let _users = store.lock_users(|| eprintln!("waiting for `boxrun gc` to finish"))?;
        for reference in &references {
            if store.remove_records(reference)? == 0 {
                return Err(Error::NotInCache(reference.to_string()));
            }
            print(format_args!("Untagged: {reference}\n"));
        }
    }
    match store.try_gc()? {
        Some(report) if report.blobs_removed > 0 => {
            eprintln!("freed {} ({} blobs)", human_bytes(report.bytes_freed), report.blobs_removed)
        }
        Some(_) => {}
        None => eprintln!("the cache is in use; run `boxrun gc` later to free the space"),
    }
    Ok(0)
}

fn gc_command(store: &Store, args: GcArgs) -> Result<i32, Error> {
    let report = store.gc(|| eprintln!("waiting for running pulls to finish"))?;
    if args.json {
        print(format_args!("{}\n", serde_json::to_string(&report).expect("report serialises")));
    } else {
        print(format_args!(
            "removed {} blobs ({}), {} unpacked images, {} top layers and {} staging entries\n",
            report.blobs_removed,
            human_bytes(report.bytes_freed),
            report.rootfs_removed,
            report.top_layers_removed,
            report.staging_removed
        ));
    }
    Ok(0)
}

fn ps_command(args: PsArgs) -> Result<i32, Error> {
    let running = crate::state::list()?;
    if args.json {
        print(format_args!("{}\n", serde_json::to_string_pretty(&running).expect("states serialise")));
        return Ok(0);
    }
    let mut table =
        format!("{:<24} {:<40} {:<12} {:>8} {:<20} COMMAND\n", "NAME", "IMAGE", "JOB", "PID", "STARTED");
    for c in &running {
        let started = format!("{}s ago", crate::unix_time().saturating_sub(c.started_at));
        let job = c.job.as_deref().unwrap_or("-");
        table.push_str(&format!(
            "{:<24} {:<40} {:<12} {:>8} {:<20} {}\n",
            c.name,
            c.image,
            job,
            c.pid,
            started,
            c.command.join(" ")
        ));
    }
    print(format_args!("{table}"));
    Ok(0)
}

fn kill_command(args: KillArgs) -> Result<i32, Error> {
    let signal =
        crate::state::parse_signal(&args.signal).ok_or_else(|| Error::BadSignal(args.signal.clone()))?;
    crate::state::kill(&args.name, signal)?;
    Ok(0)
}

/// Print to stdout; a closed pipe (`boxrun images | head`) is not an error worth a message.
fn print(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if stdout.write_fmt(args).and_then(|()| stdout.flush()).is_err() {
        std::process::exit(0);
    }
}
