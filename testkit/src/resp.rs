//! Just enough of the Redis protocol (RESP2 and RESP3) to tell where one
//! request or reply ends: what a Redis-aware proxy needs to hand whole
//! requests to a new server connection and to answer lost ones.

/// Whole values read off a byte stream that arrives in arbitrary pieces.
#[derive(Default)]
pub(crate) struct Framer {
    pending: Vec<u8>,
}

impl Framer {
    /// Adds `bytes` and returns every value that is now complete, each as its
    /// own bytes, in order; an incomplete tail is kept for the next call.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        self.pending.extend_from_slice(bytes);
        let mut values = Vec::new();
        let mut start = 0;
        while let Some(length) = value_length(&self.pending[start..]) {
            values.push(self.pending[start..start + length].to_vec());
            start += length;
        }
        self.pending.drain(..start);
        values
    }
}

/// The length of the first complete value in `bytes`, or `None` when it is
/// not complete yet. A line that starts with no type byte is an inline
/// command (`PING\r\n`), which ends with its line.
fn value_length(bytes: &[u8]) -> Option<usize> {
    let line_end = line_length(bytes)?;
    let header = std::str::from_utf8(&bytes[1..line_end - 2]).ok();
    let count = || header.and_then(|header| header.parse::<i64>().ok());
    match bytes[0] {
        // Bulk strings, blob errors, verbatim strings: a length, then the
        // bytes and a line end; -1 is nil.
        b'$' | b'!' | b'=' => match count()? {
            length if length < 0 => Some(line_end),
            length => {
                let end = line_end + usize::try_from(length).ok()? + 2;
                (bytes.len() >= end).then_some(end)
            }
        },
        // Arrays, sets, pushes: that many values; maps and attributes: twice.
        kind @ (b'*' | b'~' | b'>' | b'%' | b'|') => {
            let items = match count()? {
                items if items < 0 => return Some(line_end),
                items if matches!(kind, b'%' | b'|') => items * 2,
                items => items,
            };
            let mut end = line_end;
            for _ in 0..items {
                end += value_length(&bytes[end..])?;
            }
            Some(end)
        }
        // Simple strings, errors, numbers, nulls, booleans, doubles, big
        // numbers, and inline commands: one line.
        _ => Some(line_end),
    }
}

/// The length of the first line, `\r\n` included.
fn line_length(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(2)
        .position(|pair| pair == b"\r\n")
        .map(|at| at + 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_framed_whatever_the_pieces() {
        let stream: &[u8] =
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nv1\r\n+OK\r\n$-1\r\n*2\r\n:1\r\n*1\r\n$0\r\n\r\nPING\r\n%1\r\n+a\r\n:2\r\n";
        let expected: Vec<&[u8]> = vec![
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nv1\r\n",
            b"+OK\r\n",
            b"$-1\r\n",
            b"*2\r\n:1\r\n*1\r\n$0\r\n\r\n",
            b"PING\r\n",
            b"%1\r\n+a\r\n:2\r\n",
        ];
        for piece in [1, 2, 5, stream.len()] {
            let mut framer = Framer::default();
            let values: Vec<Vec<u8>> = stream
                .chunks(piece)
                .flat_map(|chunk| framer.push(chunk))
                .collect();
            assert_eq!(values, expected, "pieces of {piece} bytes");
        }
    }
}
