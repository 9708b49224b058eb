//! What a (re)connecting client is owed before its live messages: a resume-gap notice when its
//! topics' retained logs no longer reach its last id, the topic messages it missed, then its
//! pending directed messages, oldest first. The ids sent are remembered for a while so that a
//! live copy of the same message, queued since the connection registered, is not sent twice.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use mps_proto::{ErrorBody, Frame, frame::kind};

use crate::engine::{BACKLOG_PAGE, Engine, EngineError, encode};
use crate::hub::{Conn, Outbound};

/// How long sent ids are remembered after the catch-up is done.
const REMEMBER: Duration = Duration::from_secs(10);

enum Stage {
    Topics,
    Directed { after: u64 },
    Done,
}

pub struct CatchUp {
    stage: Stage,
    last_id: u64,
    sent: HashSet<u64>,
    forget_at: Option<Instant>,
    /// Patterns whose history was cut, for transports that report it out of band.
    pub truncated: Vec<String>,
}

impl CatchUp {
    /// `last_id` 0 means the client is not resuming topics.
    pub fn new(last_id: u64) -> Self {
        CatchUp {
            stage: Stage::Topics,
            last_id,
            sent: HashSet::new(),
            forget_at: None,
            truncated: Vec::new(),
        }
    }

    pub fn done(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    /// The next frames to send, empty once caught up.
    pub async fn next(
        &mut self,
        engine: &Engine,
        conn: &Conn,
    ) -> Result<Vec<Outbound>, EngineError> {
        let info = &conn.info;
        let mut out = Vec::new();
        match self.stage {
            Stage::Topics => {
                let topics = conn.subscriptions().topics;
                let replay = engine.replay(&info.app, &topics, self.last_id).await?;
                if !replay.truncated.is_empty() {
                    out.push(Outbound {
                        frame: encode(&reset_frame(replay.truncated.clone())),
                        id: 0,
                        directed: false,
                    });
                    self.truncated = replay.truncated;
                }
                out.extend(replay.entries.into_iter().map(|e| Outbound {
                    frame: e.frame,
                    id: e.id,
                    directed: false,
                }));
                self.stage = Stage::Directed { after: 0 };
            }
            Stage::Directed { after } => {
                let page = engine
                    .backlog(&info.app, &info.user, &info.agent, after)
                    .await?;
                let full = page.len() == BACKLOG_PAGE;
                let last = page.last().map(|(id, _)| *id).unwrap_or(after);
                out.extend(page.into_iter().map(|(id, frame)| Outbound {
                    frame,
                    id,
                    directed: true,
                }));
                self.stage = if full {
                    Stage::Directed { after: last }
                } else {
                    self.forget_at = Some(Instant::now() + REMEMBER);
                    Stage::Done
                };
            }
            Stage::Done => {}
        }
        self.sent.extend(out.iter().map(|o| o.id));
        Ok(out)
    }

    /// Whether a live frame repeats one already sent from the store.
    pub fn is_repeat(&mut self, id: u64) -> bool {
        if self.sent.is_empty() {
            return false;
        }
        if self.forget_at.is_some_and(|at| Instant::now() > at) {
            self.sent = HashSet::new();
            return false;
        }
        self.sent.contains(&id)
    }
}

/// The `Type` 10 frame telling a client that its topics' history was cut.
pub fn reset_frame(patterns: Vec<String>) -> Frame {
    Frame {
        topics: Some(patterns),
        error: Some(ErrorBody {
            code: "history_truncated".into(),
            message: "messages after your last id are no longer retained; reload your state".into(),
        }),
        ..Frame::reply(kind::RESET, None)
    }
}
