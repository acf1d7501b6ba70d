// The binary encodings of RangeDescriptor, Lease and RangeCommand: random round trips (CsCheck), every truncation of a
// valid encoding fails with FormatException, and random or mutated bytes either decode or fail with FormatException —
// never another exception (an Apply that throws anything else would stop the server's Raft loop).
using System.Buffers.Binary;
using Canopy.Clock;
using CsCheck;
using static Canopy.Ranges.Tests.Bytes;

namespace Canopy.Ranges.Tests;

public sealed class RangeCodecTests
{
    private static readonly Gen<byte[]> Key = Gen.Byte.Array[0, 12];

    private static readonly Gen<HlcTimestamp> Ts = Gen.Frequency(
        (3, Gen.Select(Gen.Long[0, 10_000], Gen.Int[0, 5], (w, l) => new HlcTimestamp(w, l))),
        (1, Gen.Select(Gen.Long[0, long.MaxValue], Gen.Int[0, int.MaxValue], (w, l) => new HlcTimestamp(w, l))));

    private static readonly Gen<ulong> Id = Gen.Frequency((4, Gen.ULong[0, 10]), (1, Gen.ULong));

    private static readonly Gen<RangeDescriptor> GenDescriptor = Gen.Select(
        Id, Key, Key.Null(), Id.Array[0, 7],
        (id, start, end, replicas) => new RangeDescriptor(id, start, end, replicas));

    private static readonly Gen<Lease> GenLease = Gen.Select(Id, Ts, Ts, Id, (h, s, e, q) => new Lease(h, s, e, q));

    private static readonly Gen<RangeCommand> GenCommand = Gen.OneOf(
        Gen.Select(Id, Gen.Select(Key, Ts, Key.Null(), (k, t, v) => new MvccWrite(k, t, v)).Array[0, 6], (seq, writes) => (RangeCommand)new RangeCommand.WriteCommand(seq, writes)),
        Gen.Select(GenLease, Id, Gen.Bool, (l, prev, transfer) => (RangeCommand)new RangeCommand.LeaseCommand(l, prev, transfer)));

    [Fact]
    public void Descriptors_round_trip()
    {
        GenDescriptor.Sample(d =>
        {
            var bytes = d.Encode();
            var back = RangeDescriptor.Decode(bytes);
            AssertSame(d, back);
            Assert.Equal(bytes, back.Encode());
        }, iter: 3_000);
    }

    [Fact]
    public void Leases_round_trip()
    {
        GenLease.Sample(l =>
        {
            var bytes = l.Encode();
            Assert.Equal(40, bytes.Length);
            Assert.Equal(l, Lease.Decode(bytes));
        }, iter: 3_000);
        Assert.Equal(Lease.None, Lease.Decode(Lease.None.Encode()));
    }

    [Fact]
    public void Commands_round_trip()
    {
        GenCommand.Sample(c =>
        {
            var bytes = c.Encode();
            var back = RangeCommand.Decode(bytes);
            AssertSame(c, back);
            Assert.Equal(bytes, back.Encode());
        }, iter: 3_000);
    }

    [Fact]
    public void The_initial_snapshot_carries_the_descriptor_and_no_lease()
    {
        var d = new RangeDescriptor(3, S("e"), null, [2, 3, 1]);
        var r = Replica.Bootstrap(d, index: 10);
        AssertSame(d, r.Sm.Descriptor!);
        Assert.Equal(Lease.None, r.Sm.Lease);
        Assert.Equal(10UL, r.Sm.Applied);
    }

    [Fact]
    public void Every_truncation_of_a_valid_encoding_is_a_FormatException()
    {
        var checkedEncodings = 0;
        Gen.Select(GenDescriptor, GenLease, GenCommand).Sample((d, l, c) =>
        {
            foreach (var (bytes, decode) in Decoders(d, l, c))
            {
                for (var len = 0; len < bytes.Length; len++)
                {
                    var prefix = bytes[..len];
                    var ex = Record.Exception(() => decode(prefix));
                    Assert.True(ex is FormatException, $"prefix of {len}/{bytes.Length} bytes of {Hex(bytes)}: {ex?.GetType().Name ?? "decoded"}");
                }

                checkedEncodings++;
            }
        }, iter: 300, threads: 1);
        Assert.Equal(900, checkedEncodings);
    }

    [Fact]
    public void Random_bytes_decode_or_fail_with_FormatException()
    {
        var random = new Random(20261125);
        var outcomes = new Dictionary<string, int>();
        for (var i = 0; i < 6_000; i++)
        {
            var bytes = new byte[random.Next(0, 80)];
            random.NextBytes(bytes);
            if (i % 3 == 0 && bytes.Length > 0)
            {
                bytes[0] = (byte)(1 + (i % 2)); // a known command kind, so decoding goes further
            }

            foreach (var (name, decode) in new (string, Func<byte[], object>)[]
            {
                ("descriptor", b => RangeDescriptor.Decode(b)),
                ("lease", b => Lease.Decode(b)),
                ("command", b => RangeCommand.Decode(b)),
            })
            {
                var outcome = Outcome(() => decode(bytes), bytes);
                var k = $"{name}: {outcome}";
                outcomes[k] = outcomes.GetValueOrDefault(k) + 1;
            }
        }

        Assert.True(outcomes.Keys.All(k => k.EndsWith("decoded", StringComparison.Ordinal) || k.EndsWith("FormatException", StringComparison.Ordinal)), string.Join("; ", outcomes));
        Assert.True(outcomes.GetValueOrDefault("command: FormatException") > 1_000, string.Join("; ", outcomes));
    }

    [Fact]
    public void Mutated_valid_encodings_decode_or_fail_with_FormatException()
    {
        var random = new Random(42);
        Gen.Select(GenDescriptor, GenLease, GenCommand).Sample((d, l, c) =>
        {
            foreach (var (bytes, decode) in Decoders(d, l, c))
            {
                if (bytes.Length == 0)
                {
                    continue;
                }

                for (var m = 0; m < 8; m++)
                {
                    var mutated = (byte[])bytes.Clone();
                    switch (random.Next(4))
                    {
                        case 0:
                            mutated[random.Next(mutated.Length)] ^= (byte)(1 << random.Next(8));
                            break;
                        case 1:
                            mutated[random.Next(mutated.Length)] = (byte)random.Next(256);
                            break;
                        case 2:
                            // A 4-byte window set to a large or negative length.
                            var at = random.Next(mutated.Length);
                            var big = new byte[4];
                            BinaryPrimitives.WriteInt32LittleEndian(big, random.Next(3) switch { 0 => int.MaxValue, 1 => -1, _ => int.MaxValue - random.Next(100) });
                            big.AsSpan(0, Math.Min(4, mutated.Length - at)).CopyTo(mutated.AsSpan(at));
                            break;
                        default:
                            mutated = [.. mutated, .. RandomBytes(random, random.Next(1, 9))];
                            break;
                    }

                    var outcome = Outcome(() => decode(mutated), mutated);
                    Assert.True(outcome is "decoded" or "FormatException", $"{Hex(mutated)}: {outcome}");
                }
            }
        }, iter: 1_000, threads: 1);
    }

    [Fact]
    public void Hostile_length_and_count_fields_are_FormatExceptions()
    {
        var d = new RangeDescriptor(1, S("a"), S("b"), [1, 2]).Encode();

        // The start key's length (after the 8-byte range id) claims int.MaxValue bytes: position + length overflows.
        foreach (var length in new[] { int.MaxValue, int.MaxValue - 3, int.MaxValue - 12, 1 << 30, -1, int.MinValue })
        {
            var bad = (byte[])d.Clone();
            BinaryPrimitives.WriteInt32LittleEndian(bad.AsSpan(8), length);
            Assert.Throws<FormatException>(() => RangeDescriptor.Decode(bad));
        }

        // More than 64 replicas.
        var many = new RangeDescriptor(1, S("a"), null, [.. Enumerable.Range(1, 65).Select(i => (ulong)i)]).Encode();
        Assert.Throws<FormatException>(() => RangeDescriptor.Decode(many));

        // A write command with a huge write count, or a key length that overflows.
        var w = new RangeCommand.WriteCommand(5, [new MvccWrite(S("k"), new HlcTimestamp(1, 0), S("v"))]).Encode();
        var count = (byte[])w.Clone();
        BinaryPrimitives.WriteUInt64LittleEndian(count.AsSpan(9), 1_000_001);
        Assert.Throws<FormatException>(() => RangeCommand.Decode(count));
        BinaryPrimitives.WriteUInt64LittleEndian(count.AsSpan(9), ulong.MaxValue);
        Assert.Throws<FormatException>(() => RangeCommand.Decode(count));
        var keyLength = (byte[])w.Clone();
        BinaryPrimitives.WriteInt32LittleEndian(keyLength.AsSpan(17), int.MaxValue);
        Assert.Throws<FormatException>(() => RangeCommand.Decode(keyLength));

        // Unknown kinds, empty input, negative timestamps.
        Assert.Throws<FormatException>(() => RangeCommand.Decode([]));
        Assert.Throws<FormatException>(() => RangeCommand.Decode([0]));
        Assert.Throws<FormatException>(() => RangeCommand.Decode([3, 0, 0]));
        var lease = new Lease(1, new HlcTimestamp(5, 0), new HlcTimestamp(9, 0), 1).Encode();
        lease[8] = 0x80; // the start's wall time, big-endian: negative
        Assert.Throws<FormatException>(() => Lease.Decode(lease));
    }

    // ------------------------------------------------------------------ helpers

    private static IEnumerable<(byte[] Bytes, Func<byte[], object> Decode)> Decoders(RangeDescriptor d, Lease l, RangeCommand c) =>
    [
        (d.Encode(), b => RangeDescriptor.Decode(b)),
        (l.Encode(), b => Lease.Decode(b)),
        (c.Encode(), b => RangeCommand.Decode(b)),
    ];

    /// <summary>"decoded" (and then re-encoding and decoding again is stable) or the exception's type name.</summary>
    private static string Outcome(Func<object> decode, byte[] input)
    {
        object value;
        try
        {
            value = decode();
        }
        catch (Exception ex)
        {
            return ex.GetType().Name;
        }

        // Whatever decoded must re-encode to something that decodes to the same thing.
        switch (value)
        {
            case RangeDescriptor d:
                AssertSame(d, RangeDescriptor.Decode(d.Encode()));
                break;
            case Lease l:
                Assert.Equal(l, Lease.Decode(l.Encode()));
                break;
            case RangeCommand c:
                AssertSame(c, RangeCommand.Decode(c.Encode()));
                break;
            default:
                throw new InvalidOperationException($"unexpected {value} from {Hex(input)}");
        }

        return "decoded";
    }

    private static byte[] RandomBytes(Random random, int n)
    {
        var b = new byte[n];
        random.NextBytes(b);
        return b;
    }

    private static void AssertSame(RangeDescriptor expected, RangeDescriptor actual)
    {
        Assert.Equal(expected.RangeId, actual.RangeId);
        Assert.Equal(expected.StartKey, actual.StartKey);
        Assert.Equal(expected.EndKey, actual.EndKey);
        Assert.Equal(expected.Replicas, actual.Replicas);
    }

    private static void AssertSame(RangeCommand expected, RangeCommand actual)
    {
        switch (expected)
        {
            case RangeCommand.WriteCommand w:
                var a = Assert.IsType<RangeCommand.WriteCommand>(actual);
                Assert.Equal(w.LeaseSequence, a.LeaseSequence);
                Assert.Equal(w.Writes.Length, a.Writes.Length);
                for (var i = 0; i < w.Writes.Length; i++)
                {
                    Assert.Equal(w.Writes[i].Key, a.Writes[i].Key);
                    Assert.Equal(w.Writes[i].Timestamp, a.Writes[i].Timestamp);
                    Assert.Equal(w.Writes[i].Value, a.Writes[i].Value);
                }

                break;
            case RangeCommand.LeaseCommand l:
                Assert.Equal(l, Assert.IsType<RangeCommand.LeaseCommand>(actual));
                break;
            case RangeCommand.EvalCommand e:
                var ea = Assert.IsType<RangeCommand.EvalCommand>(actual);
                Assert.Equal(e.LeaseSequence, ea.LeaseSequence);
                Assert.Equal(e.Ops.Length, ea.Ops.Length);
                for (var i = 0; i < e.Ops.Length; i++)
                {
                    Assert.Equal(e.Ops[i].Key, ea.Ops[i].Key);
                    Assert.Equal(e.Ops[i].Value, ea.Ops[i].Value);
                }

                break;
            default:
                throw new InvalidOperationException($"unknown command {expected}");
        }
    }
}
