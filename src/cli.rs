//! The command line (clap derive only; no behaviour here).

use clap::{Args, Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  boxrun pull ghcr.io/org/app:1.4          fetch an image into your cache (on a login node)
  boxrun pull --platform linux/arm64 debian
  boxrun images                            list cached images
  boxrun rmi ghcr.io/org/app:1.4           forget an image (its blobs go at the next gc)
  boxrun gc                                free what no cached image needs

Images are cached per user under $BOXRUN_CACHE (default ~/.cache/boxrun).
Exit status: 0 success, 125 boxrun itself failed (the message says why).";

/// Run OCI container images in HPC batch jobs: no daemon, no setuid, no root.
#[derive(Debug, Parser)]
#[command(name = "boxrun", version, about, after_help = EXAMPLES)]
pub struct Cli {
    /// Print debug detail (HTTP requests, locks) to stderr; twice for more.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch an image from its registry into your cache
    #[command(
        after_help = "Credentials come from ~/.docker/config.json or $XDG_RUNTIME_DIR/containers/auth.json."
    )]
    Pull(PullArgs),
    /// List the images in your cache
    Images(ImagesArgs),
    /// Remove images from your cache
    Rmi(RmiArgs),
    /// Delete blobs that no cached image needs, and staging left by killed processes
    Gc(GcArgs),
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image reference: [HOST[:PORT]/]PATH[:TAG][@sha256:DIGEST]; one word means Docker Hub's library/
    pub image: String,
    /// Pull for another platform than this host's, e.g. linux/arm64
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Use only the cache: no network at all (fails if the image is not cached)
    #[arg(long)]
    pub offline: bool,
    /// Only fetch the blobs; do not unpack the image's rootfs (a job unpacks it when it starts)
    #[arg(long)]
    pub no_unpack: bool,
    /// No progress output
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Print JSON (one array of image records) instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RmiArgs {
    /// Image references, as given to pull
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}
