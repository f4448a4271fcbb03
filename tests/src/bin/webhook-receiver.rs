//! A webhook receiver process: records every delivery as a JSON line and
//! answers 200. The link-down test runs it inside a network namespace.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// File that receives one JSON line per delivery.
    #[arg(long)]
    log: PathBuf,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let receiver = relay_tests::receiver::Receiver::start(args.listen, Some(&args.log)).await?;
    println!("listening on {}", receiver.addr);
    std::future::pending::<()>().await;
    Ok(())
}
