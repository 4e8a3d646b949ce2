use clap::Parser;

/// The allocator of every program: Meridian's request paths allocate per request, and
/// mimalloc's thread-local heaps make that cheaper than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = meridian::cli::Cli::parse();
    meridian::cli::init_logging();
    cli.runtime()?.block_on(meridian::cli::run(cli))
}
