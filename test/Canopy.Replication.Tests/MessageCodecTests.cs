// Tests of MessageCodec: random round trips (CsCheck), every truncation of valid frames, fuzzing with random bytes
// and mutated valid frames (FormatException is the only exception allowed, and never one wrapping a defect), the
// frame/count limits, and the copy-free aliasing contract.
using System.Buffers;
using System.Diagnostics;
using System.Runtime.InteropServices;
using Canopy.Replication.Raft;
using CsCheck;

namespace Canopy.Replication.Tests;

public sealed class MessageCodecTests
{
    private static readonly Gen<ulong> Id = Gen.Frequency((4, Gen.ULong[0, 300]), (1, Gen.ULong));

    private static readonly Gen<Entry> GenEntry = Gen.Select(
        Id, Id, Gen.Enum<EntryType>(), Gen.Byte.Array[0, 24],
        (i, t, ty, d) => new Entry(i, t, ty, d));

    private static readonly Gen<Snapshot> GenSnapshot = Gen.Select(
        Id, Id, Id.Array[0, 5], Id.Array[0, 3], Gen.Byte.Array[0, 40],
        (i, t, v, l, d) => new Snapshot(new SnapshotMeta(i, t, new ConfState(v, l)), d));

    private static readonly Gen<Message> GenMessage = Gen.Select(
        Gen.Enum<MessageType>(), Id, Id, Id, Id, Id, Id, Id, Gen.Bool, Id, Gen.Byte[0, 3],
        GenEntry.Array[0, 4], GenSnapshot.Null(0.8),
        (type, group, from, to, term, logTerm, index, commit, reject, hint, flags, entries, snap) => new Message
        {
            Type = type,
            Group = group,
            From = from,
            To = to,
            Term = term,
            LogTerm = logTerm,
            Index = index,
            Commit = commit,
            Reject = reject,
            RejectHint = hint,
            Flags = (MessageFlags)flags,
            Entries = entries,
            Snapshot = snap,
        });

    private static readonly Gen<Message[]> GenBatch = GenMessage.Array[0, 6];

    [Fact]
    public void RandomBatchesRoundTrip()
    {
        GenBatch.Sample(batch =>
        {
            var frame = MessageCodec.Encode(batch);
            Assert.Equal(MessageCodec.GetEncodedSize(batch), frame.Length);

            var writer = new ArrayBufferWriter<byte>(1);
            writer.Write<byte>([0xAA]); // encoding appends after what is already written
            MessageCodec.Encode(batch, writer);
            Assert.True(writer.WrittenSpan[1..].SequenceEqual(frame));

            AssertSame(batch, MessageCodec.Decode(frame));
            AssertSame(batch, MessageCodec.Decode(frame, copyData: true));
        }, iter: 3_000);
    }

    [Fact]
    public void ExtremeValuesRoundTrip()
    {
        var m = new Message
        {
            Type = MessageType.TimeoutNow,
            Group = ulong.MaxValue,
            From = ulong.MaxValue - 1,
            To = 1UL << 63,
            Term = (1UL << 63) - 1,
            LogTerm = 127,
            Index = 128,
            Commit = 16_383,
            Reject = true,
            RejectHint = 16_384,
            Flags = MessageFlags.Transfer | MessageFlags.Quiesce,
            Entries = [new Entry(ulong.MaxValue, ulong.MaxValue, EntryType.ConfChange, new byte[300])],
            Snapshot = new Snapshot(new SnapshotMeta(ulong.MaxValue, 0, new ConfState([1, 2, 3], [4])), ReadOnlyMemory<byte>.Empty),
        };
        AssertSame([m], MessageCodec.Decode(MessageCodec.Encode([m])));
        AssertSame([], MessageCodec.Decode(MessageCodec.Encode([])));
    }

    [Fact]
    public void DecodedDataAliasesTheFrameUnlessCopied()
    {
        var m = Heartbeat();
        var withEntry = new Message { Type = MessageType.Append, Group = 1, From = 1, To = 2, Term = 1, Entries = [new Entry(1, 1, EntryType.Normal, new byte[] { 1, 2, 3 })] };
        var frame = MessageCodec.Encode([m, withEntry]);

        var aliased = MessageCodec.Decode(frame)[1].Entries[0].Data;
        Assert.True(MemoryMarshal.TryGetArray(aliased, out var seg) && ReferenceEquals(seg.Array, frame));

        var copied = MessageCodec.Decode(frame, copyData: true)[1].Entries[0].Data;
        Assert.True(MemoryMarshal.TryGetArray(copied, out var seg2) && !ReferenceEquals(seg2.Array, frame));
        Assert.Equal(new byte[] { 1, 2, 3 }, copied.ToArray());
    }

    [Fact]
    public void EveryTruncationFails()
    {
        var frames = 0;
        GenBatch.Sample(batch =>
        {
            if (batch.Length == 0)
            {
                return;
            }

            var frame = MessageCodec.Encode(batch);
            for (var len = 0; len < frame.Length; len++)
            {
                AssertRejected(frame.AsMemory(0, len));
            }

            frames++;
        }, iter: 150, threads: 1, seed: "0000000000007");
        Assert.True(frames > 100);
    }

    [Fact]
    public void RandomBytesAreRejectedCleanly()
    {
        var random = new Random(12345);
        var buf = new byte[96];
        for (var i = 0; i < 40_000; i++)
        {
            var len = random.Next(buf.Length + 1);
            random.NextBytes(buf.AsSpan(0, len));
            if (len > 0 && (i & 1) == 0)
            {
                buf[0] = MessageCodec.Version; // get past the version check half of the time
            }

            DecodeOrReject(buf.AsMemory(0, len).ToArray());
        }
    }

    [Fact]
    public void MutatedFramesNeverThrowAnythingButFormatException()
    {
        var random = new Random(424242);
        var valid = GenBatch.Array[40, 40].Single(b => b.Length == 40, "0000000000042")
            .Where(b => b.Length > 0)
            .Select(MessageCodec.Encode)
            .ToArray();
        Assert.NotEmpty(valid);

        var sw = Stopwatch.StartNew();
        var decoded = 0;
        for (var i = 0; i < 80_000; i++)
        {
            var frame = (byte[])valid[i % valid.Length].Clone();
            switch (random.Next(6))
            {
                case 0: // single bit flip
                    FlipBit(frame, random);
                    break;
                case 1: // a few bit flips
                    for (var k = random.Next(2, 5); k > 0; k--)
                    {
                        FlipBit(frame, random);
                    }

                    break;
                case 2: // length/count corruption: a byte becomes a large varint group
                    frame[random.Next(frame.Length)] = (byte)random.Next(0x80, 0x100);
                    break;
                case 3: // a byte becomes a small value (shrinks lengths and counts)
                    frame[random.Next(frame.Length)] = (byte)random.Next(0, 4);
                    break;
                case 4: // insert a random byte
                    {
                        var at = random.Next(frame.Length + 1);
                        frame = [.. frame.AsSpan(0, at), (byte)random.Next(256), .. frame.AsSpan(at)];
                        break;
                    }

                default: // delete a byte
                    {
                        var at = random.Next(frame.Length);
                        frame = [.. frame.AsSpan(0, at), .. frame.AsSpan(at + 1)];
                        break;
                    }
            }

            decoded += DecodeOrReject(frame) ? 1 : 0;
        }

        // Some mutations (e.g. of a term or data byte) still decode; most must not.
        Assert.InRange(decoded, 1, 79_999);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(20), $"fuzzing took {sw.Elapsed}");
    }

    [Fact]
    public void OversizedFramesAndCountsAreRejected()
    {
        // Over MaxFrameBytes as a whole.
        var huge = new byte[MessageCodec.MaxFrameBytes + 1];
        huge[0] = MessageCodec.Version;
        Assert.Contains("limit", AssertRejected(huge).Message, StringComparison.Ordinal);

        // A message count over the limit, and one that the remaining bytes cannot hold.
        Assert.Contains("exceeds the limit", AssertRejected(Frame([1, .. Varint(MessageCodec.MaxMessagesPerFrame + 1)])).Message, StringComparison.Ordinal);
        var before = GC.GetAllocatedBytesForCurrentThread();
        Assert.Contains("cannot fit", AssertRejected(Frame([1, .. Varint(MessageCodec.MaxMessagesPerFrame), .. new byte[64]])).Message, StringComparison.Ordinal);
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 64 * 1024, "a hostile count must not allocate before validation");

        // An entry count over the limit.
        var prefix = MessageCodec.Encode([Heartbeat()]);
        var entryCountAt = prefix.Length - 2; // the heartbeat's entry count (0) precedes its snapshot flag (0)
        Assert.Equal(0, prefix[entryCountAt]);
        var overEntries = Frame([.. prefix[..entryCountAt], .. Varint(MessageCodec.MaxEntriesPerMessage + 1), .. new byte[1024]]);
        Assert.Contains("entry count", AssertRejected(overEntries).Message, StringComparison.Ordinal);

        // A data length beyond the frame.
        var withEntry = MessageCodec.Encode([new Message { Type = MessageType.Append, Group = 1, From = 1, To = 2, Term = 1, Entries = [new Entry(1, 1, EntryType.Normal, new byte[] { 9 })] }]);
        var lengthAt = Array.LastIndexOf(withEntry, (byte)9) - 1;
        withEntry[lengthAt] = 0x7f;
        AssertRejected(withEntry);

        // Unknown version, message type, entry type, flags, non-boolean booleans, trailing bytes.
        AssertRejected(Frame([2, 0]));
        AssertRejected(Frame([1, 1, 11, .. new byte[13]]));
        AssertRejected(Frame([1, 1, 0, .. new byte[13]]));
        var hb = MessageCodec.Encode([Heartbeat()]);
        AssertRejected(Frame([.. hb[..^5], 2, .. hb[^4..]]));           // reject = 2 (then hint, flags, entry count, snapshot flag)
        AssertRejected(Frame([.. hb[..^3], 4, .. hb[^2..]]));           // flags = 4
        AssertRejected(Frame([.. hb[..^1], 2]));                        // snapshot presence = 2
        AssertRejected(Frame([.. hb, 0]));                              // trailing byte
        AssertRejected(Frame([1, 0x80, 0x00]));                         // redundant varint group
        AssertRejected(Frame([1, .. Enumerable.Repeat((byte)0xff, 11)])); // varint overflow
    }

    [Fact]
    public void EncoderRejectsBatchesOverTheLimits()
    {
        var tooManyEntries = new Message
        {
            Type = MessageType.Append,
            Group = 1,
            From = 1,
            To = 2,
            Term = 1,
            Entries = Enumerable.Range(1, MessageCodec.MaxEntriesPerMessage + 1).Select(i => new Entry((ulong)i, 1, EntryType.Normal, default)).ToArray(),
        };
        Assert.Throws<ArgumentException>(() => MessageCodec.Encode([tooManyEntries]));

        var tooBig = new Message
        {
            Type = MessageType.Append,
            Group = 1,
            From = 1,
            To = 2,
            Term = 1,
            Entries = [new Entry(1, 1, EntryType.Normal, new byte[MessageCodec.MaxFrameBytes])],
        };
        Assert.True(MessageCodec.GetEncodedSize([tooBig]) > MessageCodec.MaxFrameBytes);
        Assert.Throws<ArgumentException>(() => MessageCodec.Encode([tooBig], new ArrayBufferWriter<byte>()));

        Assert.Throws<ArgumentException>(() => MessageCodec.Encode([new Message { Type = (MessageType)42, Group = 1, From = 1, To = 2, Term = 1 }]));
    }

    private static Message Heartbeat() => new() { Type = MessageType.Heartbeat, Group = 5, From = 1, To = 2, Term = 3, Commit = 4 };

    private static byte[] Frame(params byte[] bytes) => bytes;

    private static byte[] Varint(long v)
    {
        var list = new List<byte>();
        var u = (ulong)v;
        while (u >= 0x80)
        {
            list.Add((byte)(u | 0x80));
            u >>= 7;
        }

        list.Add((byte)u);
        return [.. list];
    }

    private static void FlipBit(byte[] frame, Random random) => frame[random.Next(frame.Length)] ^= (byte)(1 << random.Next(8));

    private static FormatException AssertRejected(ReadOnlyMemory<byte> frame)
    {
        var e = Assert.Throws<FormatException>(() => MessageCodec.Decode(frame));
        Assert.Null(e.InnerException); // an inner exception means a check is missing (see MessageCodec.Decode)
        return e;
    }

    /// <summary>True if the frame decodes (then re-encoding is stable); false if rejected with a clean FormatException.</summary>
    private static bool DecodeOrReject(byte[] frame)
    {
        Message[] messages;
        try
        {
            messages = MessageCodec.Decode(frame);
        }
        catch (FormatException e) when (e.InnerException is null)
        {
            return false;
        }

        var again = MessageCodec.Encode(messages);
        Assert.Equal(again, MessageCodec.Encode(MessageCodec.Decode(again)));
        return true;
    }

    private static void AssertSame(IReadOnlyList<Message> expected, IReadOnlyList<Message> actual)
    {
        Assert.Equal(expected.Count, actual.Count);
        for (var i = 0; i < expected.Count; i++)
        {
            var (e, a) = (expected[i], actual[i]);
            Assert.Equal(e.ToString(), a.ToString());
            Assert.Equal(
                (e.Type, e.Group, e.From, e.To, e.Term, e.LogTerm, e.Index, e.Commit, e.Reject, e.RejectHint, e.Flags),
                (a.Type, a.Group, a.From, a.To, a.Term, a.LogTerm, a.Index, a.Commit, a.Reject, a.RejectHint, a.Flags));
            Assert.Equal(e.Entries.Length, a.Entries.Length);
            for (var j = 0; j < e.Entries.Length; j++)
            {
                Assert.Equal((e.Entries[j].Index, e.Entries[j].Term, e.Entries[j].Type), (a.Entries[j].Index, a.Entries[j].Term, a.Entries[j].Type));
                Assert.True(e.Entries[j].Data.Span.SequenceEqual(a.Entries[j].Data.Span));
            }

            Assert.Equal(e.Snapshot is null, a.Snapshot is null);
            if (e.Snapshot is { } es && a.Snapshot is { } @as)
            {
                Assert.Equal((es.Meta.Index, es.Meta.Term), (@as.Meta.Index, @as.Meta.Term));
                Assert.Equal(es.Meta.Conf, @as.Meta.Conf);
                Assert.True(es.Data.Span.SequenceEqual(@as.Data.Span));
            }
        }
    }
}

/// <summary>Regression: frames of minimal messages (every number fits one varint byte) were rejected as too short.</summary>
public sealed class MessageCodecMinimalTests
{
    [Fact]
    public void MinimalMessagesRoundTrip()
    {
        var messages = Enumerable.Range(1, 5).Select(i => new Canopy.Replication.Raft.Message
        {
            Type = Canopy.Replication.Raft.MessageType.PreVote,
            Group = (ulong)i,
            From = 1,
            To = 2,
            Term = 6,
            LogTerm = 5,
            Index = 10,
        }).ToArray();
        var frame = Canopy.Replication.Raft.MessageCodec.Encode(messages);
        Assert.Equal(1 + 1 + (5 * 13), frame.Length);
        var decoded = Canopy.Replication.Raft.MessageCodec.Decode(frame);
        Assert.Equal(5, decoded.Length);
        Assert.Equal(messages[4].Group, decoded[4].Group);
        Assert.Equal(messages[0].Term, decoded[0].Term);
    }
}
