use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    meridian::cli::init_logging();
    meridian::cli::run(meridian::cli::Cli::parse()).await
}
