//! `muster_client::Client::execute`, the synchronous call a Rust service
//! uses, against a real hub and its local agent: both streams and the exit
//! code, a timeout that ends the run on the agent, and a refused run.

use std::time::Duration;

use muster_client::{AgentName, Client, CommandSpec};
use muster_proto::{ErrorCode, RunState};

use crate::fixture::{Server, tempdir};

/// The timeout of the command that must be killed by it.
const SHORT_TIMEOUT: Duration = Duration::from_millis(500);

#[test]
fn execute_waits_for_the_result_and_times_out_on_the_agent() {
    let dir = tempdir();
    let dev = Server::dev(dir.path());
    let token = dev.token.clone().expect("dev prints a token");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, _events) = Client::connect(&dev.hub, &token).await.unwrap();
        let local = AgentName::new("local").unwrap();

        let script = "printf 'out\\n'; printf 'err\\n' >&2; exit 3";
        let command = CommandSpec::Shell(script.into());
        let output = client
            .execute(&local, command, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(output.stdout, b"out\n");
        assert_eq!(output.stderr, b"err\n");
        assert_eq!(
            (output.state, output.exit_code),
            (RunState::Completed, Some(3))
        );
        assert!(!output.truncated);

        let sleep = CommandSpec::Argv(vec!["sleep".into(), "30".into()]);
        let output = client.execute(&local, sleep, SHORT_TIMEOUT).await.unwrap();
        assert_eq!(output.state, RunState::TimedOut, "{output:?}");
        let stored = client.run_info(output.run).await.unwrap();
        assert_eq!(stored.state, RunState::TimedOut);
        assert_eq!(stored.timeout_ms, Some(500));

        let nobody = AgentName::new("nobody").unwrap();
        let command = CommandSpec::Argv(vec!["true".into()]);
        let refused = client
            .execute(&nobody, command, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Some(ErrorCode::AgentNotFound), "{refused}");
        client.close().await;
    });
}
