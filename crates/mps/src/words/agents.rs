//! Which clients (by agent: `ios`, `android`, `bs`...) a message is for, as the hub, the
//! broker, the store and the vendor push all filter by it.

/// Which agents' connections a message is for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AgentFilter {
    #[default]
    Any,
    /// Only connections of these agents.
    Only(Vec<String>),
    /// Connections of every agent but these.
    Except(Vec<String>),
}

impl AgentFilter {
    /// The filter of a message's `agents` field.
    pub fn only(agents: Option<Vec<String>>) -> Self {
        agents.map_or(AgentFilter::Any, AgentFilter::Only)
    }

    pub fn admits(&self, agent: &str) -> bool {
        match self {
            AgentFilter::Any => true,
            AgentFilter::Only(list) => list.iter().any(|a| a == agent),
            AgentFilter::Except(list) => !list.iter().any(|a| a == agent),
        }
    }
}
