// MessageCodec: the wire encoding of a batch of Raft messages (many groups, one destination server) as one
// transport frame payload.
//
// Guarantees
// - Decode(Encode(ms)) reproduces every field of every message (entries and snapshot included), in order.
// - Decode never trusts its input: every count and length is checked against the bytes that remain and against
//   MaxFrameBytes / MaxMessagesPerFrame / MaxEntriesPerMessage before anything is allocated, so memory use is
//   bounded by a small multiple of the input size. Unknown versions, message types, entry types, flag bits and
//   non-0/1 booleans, overlong or overflowing varints, truncation and trailing bytes are all rejected.
// - FormatException is the only exception Decode lets escape (a defect in the checks below surfaces as a
//   FormatException carrying the original exception as InnerException; the tests assert that never happens).
// - Decoded entry and snapshot data are slices of the input (no copy) unless copyData is true. The caller must
//   therefore hand over a buffer it will never modify or reuse — the transport delivers one freshly allocated
//   byte[] per frame, which satisfies this. Note that a slice keeps the whole frame alive as long as any entry of
//   it is referenced; pass copyData: true where decoded entries are kept for a long time.
// - Encode rejects (ArgumentException) batches that break the limits or use undefined enum values: a caller bug,
//   never a runtime condition. Use GetEncodedSize to split batches below MaxFrameBytes.
//
// Format (version 1). "uv" is an unsigned LEB128 varint (7 bits per byte, least significant group first, at most
// 10 bytes, no redundant trailing zero group); "u8" is one byte. Varints keep heartbeats — the bulk of the traffic
// between two servers hosting many groups — to about 15 bytes each.
//
//   frame    := u8 version(=1) · uv count · message{count}
//   message  := u8 type(1..10) · uv group · uv from · uv to · uv term · uv logTerm · uv index · uv commit
//               · u8 reject(0|1) · uv rejectHint · u8 flags(known bits only)
//               · uv entryCount · entry{entryCount}
//               · u8 hasSnapshot(0|1) · [snapshot]
//   entry    := uv index · uv term · u8 type(0|1) · uv dataLength · u8{dataLength}
//   snapshot := uv metaIndex · uv metaTerm · uv confLength · u8{confLength} (ConfState.Encode)
//               · uv dataLength · u8{dataLength}
using System.Buffers;
using System.Numerics;

namespace Canopy.Replication.Raft;

/// <summary>Binary encoding of a batch of <see cref="Message"/>s into one frame payload, and validating decoding.</summary>
public static class MessageCodec
{
    /// <summary>The format version written in the first byte of every frame.</summary>
    public const byte Version = 1;

    /// <summary>Largest encoded frame accepted or produced (equals the transport's default maximum frame size).</summary>
    public const int MaxFrameBytes = 64 * 1024 * 1024;

    /// <summary>Most messages in one frame (a heartbeat for each of a million groups still fits).</summary>
    public const int MaxMessagesPerFrame = 1 << 20;

    /// <summary>Most entries in one message.</summary>
    public const int MaxEntriesPerMessage = 1 << 16;

    // Smallest possible encodings, used to bound counts by the remaining bytes before allocating arrays.
    private const int MinMessageBytes = 13; // type, 7 varints, reject, hint, flags, entry count, has-snapshot
    private const int MinEntryBytes = 4;

    private const MessageFlags KnownFlags = MessageFlags.Transfer | MessageFlags.Quiesce;

    /// <summary>Exact size in bytes of <paramref name="message"/> inside a frame (excluding the frame header).</summary>
    public static int GetEncodedSize(Message message)
    {
        ArgumentNullException.ThrowIfNull(message);
        long size = 1
            + VarintSize(message.Group) + VarintSize(message.From) + VarintSize(message.To) + VarintSize(message.Term)
            + VarintSize(message.LogTerm) + VarintSize(message.Index) + VarintSize(message.Commit)
            + 1 + VarintSize(message.RejectHint) + 1
            + VarintSize((ulong)message.Entries.Length);
        foreach (var e in message.Entries)
        {
            size += VarintSize(e.Index) + VarintSize(e.Term) + 1 + VarintSize((ulong)e.Data.Length) + e.Data.Length;
        }

        size += 1;
        if (message.Snapshot is { } snap)
        {
            var confLength = ConfLength(snap.Meta.Conf);
            size += VarintSize(snap.Meta.Index) + VarintSize(snap.Meta.Term)
                + VarintSize((ulong)confLength) + confLength
                + VarintSize((ulong)snap.Data.Length) + snap.Data.Length;
        }

        return size > MaxFrameBytes ? MaxFrameBytes + 1 : (int)size;
    }

    /// <summary>Exact size in bytes of the frame <see cref="Encode(IReadOnlyList{Message}, IBufferWriter{byte})"/> writes.</summary>
    public static int GetEncodedSize(IReadOnlyList<Message> messages)
    {
        ArgumentNullException.ThrowIfNull(messages);
        long size = 1 + VarintSize((ulong)messages.Count);
        for (var i = 0; i < messages.Count && size <= MaxFrameBytes; i++)
        {
            size += GetEncodedSize(messages[i]);
        }

        return size > MaxFrameBytes ? MaxFrameBytes + 1 : (int)size;
    }

    /// <summary>Encodes <paramref name="messages"/> as one frame into a new array.</summary>
    public static byte[] Encode(IReadOnlyList<Message> messages)
    {
        var size = CheckedSize(messages);
        var buf = new byte[size];
        Write(messages, buf);
        return buf;
    }

    /// <summary>
    /// Encodes <paramref name="messages"/> as one frame, appending exactly <see cref="GetEncodedSize(IReadOnlyList{Message})"/>
    /// bytes to <paramref name="writer"/> with a single GetSpan/Advance.
    /// </summary>
    /// <exception cref="ArgumentException">Limits exceeded or an undefined enum value.</exception>
    public static void Encode(IReadOnlyList<Message> messages, IBufferWriter<byte> writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        var size = CheckedSize(messages);
        var span = writer.GetSpan(size)[..size];
        Write(messages, span);
        writer.Advance(size);
    }

    /// <summary>
    /// Decodes and validates one frame. Entry and snapshot data alias <paramref name="frame"/> unless
    /// <paramref name="copyData"/> is true: the caller must not modify or reuse the buffer afterwards.
    /// </summary>
    /// <exception cref="FormatException">The frame is malformed or exceeds a limit (the only exception thrown).</exception>
    public static Message[] Decode(ReadOnlyMemory<byte> frame, bool copyData = false)
    {
        try
        {
            return DecodeUnchecked(frame, copyData);
        }
        catch (Exception e) when (e is not FormatException and not OutOfMemoryException)
        {
            // Defence in depth: the explicit checks should make this unreachable (the fuzz tests assert it).
            throw new FormatException("message frame: internal decoder error: " + e.Message, e);
        }
    }

    private static int CheckedSize(IReadOnlyList<Message> messages)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (messages.Count > MaxMessagesPerFrame)
        {
            throw new ArgumentException($"{messages.Count} messages exceed {MaxMessagesPerFrame} per frame", nameof(messages));
        }

        foreach (var m in messages)
        {
            ArgumentNullException.ThrowIfNull(m, nameof(messages));
            if (m.Type is < MessageType.PreVote or > MessageType.TimeoutNow)
            {
                throw new ArgumentException($"undefined message type {(byte)m.Type}", nameof(messages));
            }

            if ((m.Flags & ~KnownFlags) != 0)
            {
                throw new ArgumentException($"undefined message flags {(byte)m.Flags}", nameof(messages));
            }

            if (m.Entries.Length > MaxEntriesPerMessage)
            {
                throw new ArgumentException($"{m.Entries.Length} entries exceed {MaxEntriesPerMessage} per message", nameof(messages));
            }

            foreach (var e in m.Entries)
            {
                if (e.Type is not (EntryType.Normal or EntryType.ConfChange))
                {
                    throw new ArgumentException($"undefined entry type {(byte)e.Type}", nameof(messages));
                }
            }
        }

        var size = GetEncodedSize(messages);
        if (size > MaxFrameBytes)
        {
            throw new ArgumentException($"encoded batch exceeds {MaxFrameBytes} bytes; split it (see GetEncodedSize)", nameof(messages));
        }

        return size;
    }

    private static void Write(IReadOnlyList<Message> messages, Span<byte> dst)
    {
        var w = new SpanWriter(dst);
        w.Byte(Version);
        w.Varint((ulong)messages.Count);
        foreach (var m in messages)
        {
            w.Byte((byte)m.Type);
            w.Varint(m.Group);
            w.Varint(m.From);
            w.Varint(m.To);
            w.Varint(m.Term);
            w.Varint(m.LogTerm);
            w.Varint(m.Index);
            w.Varint(m.Commit);
            w.Byte(m.Reject ? (byte)1 : (byte)0);
            w.Varint(m.RejectHint);
            w.Byte((byte)m.Flags);
            w.Varint((ulong)m.Entries.Length);
            foreach (var e in m.Entries)
            {
                w.Varint(e.Index);
                w.Varint(e.Term);
                w.Byte((byte)e.Type);
                w.Bytes(e.Data.Span);
            }

            if (m.Snapshot is { } snap)
            {
                w.Byte(1);
                w.Varint(snap.Meta.Index);
                w.Varint(snap.Meta.Term);
                w.Bytes(snap.Meta.Conf.Encode());
                w.Bytes(snap.Data.Span);
            }
            else
            {
                w.Byte(0);
            }
        }

        if (w.Position != dst.Length)
        {
            throw new InvalidOperationException($"message codec: size mismatch ({w.Position} written, {dst.Length} computed)");
        }
    }

    private static Message[] DecodeUnchecked(ReadOnlyMemory<byte> frame, bool copyData)
    {
        if (frame.Length > MaxFrameBytes)
        {
            throw new FormatException($"message frame: {frame.Length} bytes exceed the {MaxFrameBytes}-byte limit");
        }

        var r = new Reader(frame, copyData);
        var version = r.Byte("version");
        if (version != Version)
        {
            throw new FormatException($"message frame: unsupported version {version} (expected {Version})");
        }

        var count = r.Count("message count", MaxMessagesPerFrame, MinMessageBytes);
        var messages = new Message[count];
        for (var i = 0; i < count; i++)
        {
            messages[i] = ReadMessage(ref r, i);
        }

        if (r.Remaining != 0)
        {
            throw new FormatException($"message frame: {r.Remaining} trailing bytes after {count} messages");
        }

        return messages;
    }

    private static Message ReadMessage(ref Reader r, int i)
    {
        var type = r.Byte("message type");
        if (type is < (byte)MessageType.PreVote or > (byte)MessageType.TimeoutNow)
        {
            throw new FormatException($"message frame: message {i} has unknown type {type}");
        }

        var group = r.Varint("group");
        var from = r.Varint("from");
        var to = r.Varint("to");
        var term = r.Varint("term");
        var logTerm = r.Varint("log term");
        var index = r.Varint("index");
        var commit = r.Varint("commit");
        var reject = r.Bool("reject");
        var rejectHint = r.Varint("reject hint");
        var flags = r.Byte("flags");
        if ((flags & ~(byte)KnownFlags) != 0)
        {
            throw new FormatException($"message frame: message {i} has unknown flag bits 0x{flags:x2}");
        }

        var entryCount = r.Count("entry count", MaxEntriesPerMessage, MinEntryBytes);
        var entries = entryCount == 0 ? [] : new Entry[entryCount];
        for (var j = 0; j < entryCount; j++)
        {
            var eIndex = r.Varint("entry index");
            var eTerm = r.Varint("entry term");
            var eType = r.Byte("entry type");
            if (eType is not ((byte)EntryType.Normal or (byte)EntryType.ConfChange))
            {
                throw new FormatException($"message frame: message {i} entry {j} has unknown type {eType}");
            }

            entries[j] = new Entry(eIndex, eTerm, (EntryType)eType, r.Data("entry data"));
        }

        Snapshot? snapshot = null;
        if (r.Bool("snapshot presence"))
        {
            var metaIndex = r.Varint("snapshot index");
            var metaTerm = r.Varint("snapshot term");
            var conf = ConfState.Decode(r.Data("snapshot conf state").Span);
            snapshot = new Snapshot(new SnapshotMeta(metaIndex, metaTerm, conf), r.Data("snapshot data"));
        }

        return new Message
        {
            Type = (MessageType)type,
            Group = group,
            From = from,
            To = to,
            Term = term,
            LogTerm = logTerm,
            Index = index,
            Commit = commit,
            Reject = reject,
            RejectHint = rejectHint,
            Flags = (MessageFlags)flags,
            Entries = entries,
            Snapshot = snapshot,
        };
    }

    private static int VarintSize(ulong v) => (BitOperations.Log2(v | 1) / 7) + 1;

    private static int ConfLength(ConfState conf) => 8 + (8 * (conf.Voters.Length + conf.Learners.Length));

    private ref struct SpanWriter(Span<byte> dst)
    {
        private readonly Span<byte> _dst = dst;

        public int Position { get; private set; }

        public void Byte(byte b) => _dst[Position++] = b;

        public void Varint(ulong v)
        {
            while (v >= 0x80)
            {
                _dst[Position++] = (byte)(v | 0x80);
                v >>= 7;
            }

            _dst[Position++] = (byte)v;
        }

        /// <summary>Length-prefixed bytes.</summary>
        public void Bytes(ReadOnlySpan<byte> data)
        {
            Varint((ulong)data.Length);
            data.CopyTo(_dst[Position..]);
            Position += data.Length;
        }
    }

    private ref struct Reader(ReadOnlyMemory<byte> frame, bool copyData)
    {
        private readonly ReadOnlyMemory<byte> _frame = frame;
        private readonly ReadOnlySpan<byte> _span = frame.Span;
        private readonly bool _copyData = copyData;
        private int _pos;

        public readonly int Remaining => _span.Length - _pos;

        public byte Byte(string what)
        {
            if (_pos >= _span.Length)
            {
                throw Truncated(what);
            }

            return _span[_pos++];
        }

        public bool Bool(string what)
        {
            var b = Byte(what);
            return b switch
            {
                0 => false,
                1 => true,
                _ => throw new FormatException($"message frame: {what} must be 0 or 1, found {b} at offset {_pos - 1}"),
            };
        }

        public ulong Varint(string what)
        {
            var span = _span;
            ulong result = 0;
            for (var shift = 0; shift < 64; shift += 7)
            {
                if (_pos >= span.Length)
                {
                    throw Truncated(what);
                }

                var b = span[_pos++];
                if (shift == 63 && b > 1)
                {
                    throw new FormatException($"message frame: {what} varint overflows 64 bits at offset {_pos - 1}");
                }

                result |= (ulong)(b & 0x7f) << shift;
                if (b < 0x80)
                {
                    if (b == 0 && shift > 0)
                    {
                        throw new FormatException($"message frame: {what} varint has a redundant zero group at offset {_pos - 1}");
                    }

                    return result;
                }
            }

            throw new FormatException($"message frame: {what} varint longer than 10 bytes at offset {_pos}");
        }

        /// <summary>A count bounded by <paramref name="max"/> and by how many minimal items the remaining bytes can hold.</summary>
        public int Count(string what, int max, int minItemBytes)
        {
            var start = _pos;
            var v = Varint(what);
            if (v > (ulong)max)
            {
                throw new FormatException($"message frame: {what} {v} exceeds the limit of {max} (offset {start})");
            }

            if (v > (ulong)(Remaining / minItemBytes))
            {
                throw new FormatException($"message frame: {what} {v} cannot fit in the remaining {Remaining} bytes (offset {start})");
            }

            return (int)v;
        }

        /// <summary>Length-prefixed bytes: a slice of the frame, or a copy.</summary>
        public ReadOnlyMemory<byte> Data(string what)
        {
            var start = _pos;
            var length = Varint(what + " length");
            if (length > (ulong)Remaining)
            {
                throw new FormatException($"message frame: {what} length {length} exceeds the remaining {Remaining} bytes (offset {start})");
            }

            if (length == 0)
            {
                return ReadOnlyMemory<byte>.Empty; // never pins the frame
            }

            var slice = _frame.Slice(_pos, (int)length);
            _pos += (int)length;
            return _copyData ? slice.ToArray() : slice;
        }

        private readonly FormatException Truncated(string what) =>
            new($"message frame: truncated while reading {what} at offset {_pos} of {_frame.Length}");
    }
}
