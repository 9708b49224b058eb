//! What a node reads from the cluster's pub/sub channels (`broker/wire.rs`): any payload is
//! decoded or refused without a panic, and what decodes encodes to a payload that decodes to the
//! same envelope.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mps::broker::wire::{Received, decode, encode, encode_kick};
use mps::hub::{Envelope, Target};

/// The parts of an envelope a receiving node acts on.
fn parts(envelope: &Envelope) -> impl PartialEq + std::fmt::Debug + use<> {
    (
        envelope.app.clone(),
        envelope.target.clone(),
        envelope.agents.clone(),
        envelope.component.clone(),
        envelope.id,
        envelope.directed,
        envelope.frame.clone(),
        envelope.variants.clone(),
    )
}

fuzz_target!(|data: &[u8]| {
    match decode(Bytes::copy_from_slice(data)) {
        None => {}
        Some(Received::Kick(id)) => {
            assert!(
                matches!(decode(encode_kick(7, id)), Some(Received::Kick(again)) if again == id)
            );
        }
        Some(Received::Envelope { origin, envelope }) => {
            let Target::Users(users) = &envelope.target else {
                let again = decode(encode(origin, &envelope));
                let Some(Received::Envelope {
                    origin: o,
                    envelope: e,
                }) = again
                else {
                    panic!("an encoded envelope does not decode");
                };
                assert_eq!(o, origin);
                assert_eq!(parts(&e), parts(&envelope));
                return;
            };
            assert_eq!(users.len(), 1, "a payload carries one user");
            let again = decode(encode(origin, &envelope));
            let Some(Received::Envelope { envelope: e, .. }) = again else {
                panic!("an encoded envelope does not decode");
            };
            assert_eq!(parts(&e), parts(&envelope));
        }
    }
});
