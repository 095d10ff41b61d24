//! `mirage keygen` / `mirage vendor keygen`: a new secret key; `mirage key show`: what a
//! key file's public half is.

use anyhow::Result;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Where to write the secret key (created with mode 0600; never overwritten).
    #[arg(long)]
    out: PathBuf,
    /// Print the public key and peer id as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Print a key file's public key (what nodes `--trust` for a vendor key) and peer id.
    Show(ShowArgs),
}

#[derive(clap::Args)]
pub struct ShowArgs {
    /// The secret key file (from `mirage keygen` or `mirage vendor keygen`).
    key: PathBuf,
    /// Print JSON: `public_key` and `peer_id`.
    #[arg(long)]
    json: bool,
}

fn print(keypair: &mirage_protocol::Keypair, json: bool) {
    if json {
        let v = serde_json::json!({
            "public_key": keypair.public().to_string(),
            "peer_id": keypair.public().peer_id(),
        });
        println!("{v}");
    } else {
        println!("public key: {}", keypair.public());
        println!("peer id:    {}", keypair.public().peer_id());
    }
}

pub fn run(args: Args) -> Result<()> {
    let keypair = mirage_node::keyfile::create(&args.out)?;
    print(&keypair, args.json);
    Ok(())
}

pub fn run_key(command: KeyCommand) -> Result<()> {
    match command {
        KeyCommand::Show(args) => {
            let keypair = mirage_node::keyfile::load(&args.key)?;
            print(&keypair, args.json);
            Ok(())
        }
    }
}
