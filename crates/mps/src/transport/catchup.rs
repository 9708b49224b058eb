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

/// The catch-up of one connection. Its state is boxed and dropped once the catch-up is over and
/// nothing sent needs remembering, so that the idle connections a node holds by the ten thousand
/// carry one pointer for it.
pub struct CatchUp(Option<Box<State>>);

struct State {
    stage: Stage,
    last_id: u64,
    sent: HashSet<u64>,
    forget_at: Option<Instant>,
    /// Patterns whose history was cut, for transports that report it out of band.
    truncated: Vec<String>,
}

impl CatchUp {
    /// `last_id` 0 means the client is not resuming topics.
    pub fn new(last_id: u64) -> Self {
        CatchUp(Some(Box::new(State {
            stage: Stage::Topics,
            last_id,
            sent: HashSet::new(),
            forget_at: None,
            truncated: Vec::new(),
        })))
    }

    pub fn done(&self) -> bool {
        self.0
            .as_ref()
            .is_none_or(|state| matches!(state.stage, Stage::Done))
    }

    /// Patterns whose history was cut (the reset frame carries them too).
    pub fn truncated(&self) -> &[String] {
        self.0.as_ref().map_or(&[], |state| &state.truncated)
    }

    /// The next frames to send, empty once caught up.
    pub async fn next(
        &mut self,
        engine: &Engine,
        conn: &Conn,
    ) -> Result<Vec<Outbound>, EngineError> {
        let Some(state) = self.0.as_mut() else {
            return Ok(Vec::new());
        };
        let info = &conn.info;
        let mut out = Vec::new();
        match state.stage {
            Stage::Topics => {
                let topics = conn.subscriptions().topics;
                let replay = engine.replay(&info.app, &topics, state.last_id).await?;
                if !replay.truncated.is_empty() {
                    out.push(Outbound {
                        frame: encode(&reset_frame(replay.truncated.clone())),
                        id: 0,
                        directed: false,
                    });
                    state.truncated = replay.truncated;
                }
                out.extend(replay.entries.into_iter().map(|e| Outbound {
                    frame: e.frame,
                    id: e.id,
                    directed: false,
                }));
                state.stage = Stage::Directed { after: 0 };
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
                state.stage = if full {
                    Stage::Directed { after: last }
                } else {
                    state.forget_at = Some(Instant::now() + REMEMBER);
                    Stage::Done
                };
            }
            Stage::Done => {}
        }
        state.sent.extend(out.iter().map(|o| o.id));
        if matches!(state.stage, Stage::Done) && state.sent.is_empty() && state.truncated.is_empty()
        {
            self.0 = None;
        }
        Ok(out)
    }

    /// Whether a live frame repeats one already sent from the store.
    pub fn is_repeat(&mut self, id: u64) -> bool {
        let Some(state) = self.0.as_ref() else {
            return false;
        };
        if state.forget_at.is_some_and(|at| Instant::now() > at) {
            self.0 = None;
            return false;
        }
        state.sent.contains(&id)
    }

    /// Drops what is remembered once it is no longer needed; for a connection's idle moments.
    pub fn tidy(&mut self) {
        if self
            .0
            .as_ref()
            .and_then(|state| state.forget_at)
            .is_some_and(|at| Instant::now() > at)
        {
            self.0 = None;
        }
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
