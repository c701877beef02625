//! `astrtc testenv up|down|list`: ephemeral test environments.

use astrtc::cli::TestenvCommand;
use astrtc::testenv::{self, Options};

use super::CmdError;
use crate::ui;

/// Runs a `testenv` subcommand.
pub async fn run(command: TestenvCommand) -> Result<(), CmdError> {
    match command {
        TestenvCommand::Up { spec, name, endpoints, rtp_ports, ttl, image, json } => {
            let opts = Options {
                spec,
                name,
                endpoints: Some(endpoints),
                rtp_ports: Some(rtp_ports),
                ttl,
                image,
                port_range: None,
            };
            let instance = testenv::up(&opts).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&instance).unwrap_or_default());
            } else {
                print!("{}", ui::testenv_text(&instance));
            }
            Ok(())
        }
        TestenvCommand::Down { name: Some(name), .. } => {
            testenv::down(&name).await?;
            println!("removed test environment {name}");
            Ok(())
        }
        TestenvCommand::Down { name: None, .. } => {
            let removed = testenv::down_all().await?;
            if removed.is_empty() {
                println!("no test environments");
            } else {
                println!("removed {}", removed.join(", "));
            }
            Ok(())
        }
        TestenvCommand::List { json } => {
            let list = testenv::list().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list).unwrap_or_default());
            } else {
                print!("{}", ui::testenv_list(&list));
            }
            Ok(())
        }
        TestenvCommand::Reap { name, at } => Ok(testenv::reap(&name, at).await?),
    }
}
