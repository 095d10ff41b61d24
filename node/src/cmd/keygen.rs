use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Where to write the secret key (created with mode 0600; never overwritten).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let keypair = mirage_node::keyfile::create(&args.out)?;
    println!("public key: {}", keypair.public());
    println!("peer id:    {}", keypair.public().peer_id());
    Ok(())
}
