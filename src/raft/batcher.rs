//! Group commit in front of openraft. openraft 0.9 waits for each log append to be flushed
//! before it takes the next client write, so one entry per write caps a server at one
//! write per fsync. The batcher turns every write that arrives while a log entry is being
//! committed into the next single entry ([`Command::Batch`]): under load many writes share
//! one append, one fsync and one replication round trip; alone, a write goes straight
//! through.

use openraft::Raft;
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot};

use super::{RaftNodeError, TypeConfig};
use crate::state::{Command, CommandResult};

/// Writes queued at once before the batcher stops waiting for more: bounds the work
/// behind the first write.
const MAX_BATCH: usize = 1024;
/// Bytes of values in one batch entry (a single larger command still goes alone).
const MAX_BATCH_BYTES: usize = 256 * 1024;

type Reply = oneshot::Sender<Result<CommandResult, RaftNodeError>>;

/// The handle writes go through.
#[derive(Clone)]
pub struct WriteBatcher {
    tx: mpsc::UnboundedSender<(Command, Reply)>,
}

impl WriteBatcher {
    /// Starts the batching task for `raft`; it ends when every handle is dropped.
    pub fn start(raft: Raft<TypeConfig>) -> WriteBatcher {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx));
        WriteBatcher { tx }
    }

    /// Appends `cmd` (in a batch with whatever else is waiting) and returns its result.
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, RaftNodeError> {
        let (reply, result) = oneshot::channel();
        self.tx
            .send((cmd, reply))
            .map_err(|_| RaftNodeError::Fatal("raft stopped".into()))?;
        result
            .await
            .map_err(|_| RaftNodeError::Fatal("raft stopped".into()))?
    }
}

async fn run(raft: Raft<TypeConfig>, mut rx: mpsc::UnboundedReceiver<(Command, Reply)>) {
    let mut carry: Option<(Command, Reply)> = None;
    loop {
        let first = match carry.take() {
            Some(w) => w,
            None => match rx.recv().await {
                Some(w) => w,
                None => return,
            },
        };
        let mut bytes = first.0.approx_size();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(w) if bytes + w.0.approx_size() > MAX_BATCH_BYTES => {
                    carry = Some(w);
                    break;
                }
                Ok(w) => {
                    bytes += w.0.approx_size();
                    batch.push(w);
                }
                Err(_) => break,
            }
        }
        let (mut cmds, replies): (Vec<Command>, Vec<Reply>) = batch.into_iter().unzip();
        let entry = if cmds.len() == 1 {
            cmds.pop().expect("one command")
        } else {
            Command::Batch(cmds)
        };
        match (write_one(&raft, entry).await, replies.len()) {
            (Ok(CommandResult::Batch(results)), n) if n > 1 => {
                for (reply, r) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(r));
                }
            }
            (Ok(r), _) => {
                for reply in replies {
                    let _ = reply.send(Ok(r.clone()));
                }
            }
            (Err(e), _) => {
                for reply in replies {
                    let _ = reply.send(Err(e.duplicate()));
                }
            }
        }
    }
}

/// One `client_write`, with openraft's errors mapped to ours.
async fn write_one(raft: &Raft<TypeConfig>, cmd: Command) -> Result<CommandResult, RaftNodeError> {
    match raft.client_write(std::sync::Arc::new(cmd)).await {
        Ok(r) => Ok(r.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            match (f.leader_id, f.leader_node) {
                (Some(id), Some(node)) => Err(RaftNodeError::NotLeader {
                    leader: Some((id, node)),
                }),
                _ => Err(RaftNodeError::NoLeader),
            }
        }
        Err(e) => Err(RaftNodeError::Fatal(e.to_string())),
    }
}
