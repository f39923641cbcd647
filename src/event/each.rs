//! Decoding a record into events whatever its shape: a native event, a batch of them, or a
//! managed-cluster export ([`super::managed`]), with every failure reported with its place.

use super::decode::{DecodeError, DecodeErrorKind, Position, Record, decode_event, decode_record};
use super::managed::InputFormat;
use super::model::AuditEvent;

/// Decodes one record into events; errors go to `on_error`. Native events are decoded in
/// place; a record (or batch item) that is not one is offered to the managed-cluster shapes
/// `format` allows (EKS, AKS, GKE), see [`super::managed`].
pub fn decode_each(
    format: InputFormat,
    position: &Position,
    text: &str,
    on_error: &mut dyn FnMut(DecodeError),
    on_event: &mut dyn FnMut(&AuditEvent<'_>),
) -> u64 {
    let fail = |kind: DecodeErrorKind, position: Position| DecodeError { position, kind };
    if !matches!(format, InputFormat::Auto | InputFormat::Native) {
        // An explicit managed format: the record must be in it.
        return managed(format, position, text, on_error, on_event).unwrap_or_else(|| {
            on_error(fail(
                super::managed::not_in_format(format),
                position.clone(),
            ));
            0
        });
    }
    match decode_record(text) {
        Ok(Record::Event(ev)) => {
            on_event(&ev);
            1
        }
        Ok(Record::Batch(items)) => {
            let mut n = 0;
            let base = text.as_ptr() as usize;
            for (i, item) in items.iter().enumerate() {
                let item_pos = Position {
                    item: Some(i),
                    offset: position.offset + (item.get().as_ptr() as usize - base) as u64,
                    ..position.clone()
                };
                match decode_event(item.get()) {
                    Ok(ev) => {
                        on_event(&ev);
                        n += 1;
                    }
                    Err(kind) => match managed(format, &item_pos, item.get(), on_error, on_event) {
                        Some(m) => n += m,
                        None => on_error(fail(kind, item_pos)),
                    },
                }
            }
            n
        }
        Err(kind) => match managed(format, position, text, on_error, on_event) {
            Some(n) => n,
            None => {
                on_error(fail(kind, position.clone()));
                0
            }
        },
    }
}

/// The managed-cluster path of [`decode_each`]: `None` when `text` is not a managed shape.
fn managed(
    format: InputFormat,
    position: &Position,
    text: &str,
    on_error: &mut dyn FnMut(DecodeError),
    on_event: &mut dyn FnMut(&AuditEvent<'_>),
) -> Option<u64> {
    if format == InputFormat::Native {
        return None;
    }
    match super::managed::unwrap(format, text) {
        Ok(None) => None,
        Ok(Some(unwrapped)) => {
            let mut n = 0;
            for (i, event) in unwrapped.events.iter().enumerate() {
                let at = Position {
                    item: Some(i),
                    ..position.clone()
                };
                // The inner events are native: decode them natively.
                n += decode_each(InputFormat::Native, &at, event, on_error, on_event);
            }
            Some(n)
        }
        Err(kind) => {
            on_error(DecodeError {
                position: position.clone(),
                kind,
            });
            Some(0)
        }
    }
}
