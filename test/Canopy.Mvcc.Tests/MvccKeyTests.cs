using Canopy.Clock;
using CsCheck;
using static Canopy.Mvcc.Tests.Bytes;

namespace Canopy.Mvcc.Tests;

/// <summary>
/// The key encodings: MVCC keys preserve user-key order, put the intent first and versions newest first, decode back
/// exactly, and reject what they cannot represent; range-local, system and user keys sit in their own ordered spans.
/// </summary>
public sealed class MvccKeyTests
{
    // Bytes around the escape: 0x00 (escaped), 0x01 (the version terminator's second byte), 0xFF (the escape's).
    private static readonly Gen<byte[]> UserKey = Gen.Frequency(
        (4, Gen.OneOf<byte>(0x00, 0x01, 0x02, 0xFE, 0xFF).Array[0, 5]),
        (1, Gen.Byte.Array[0, 40]));

    private static readonly Gen<HlcTimestamp> Ts = Gen.Select(
        Gen.Frequency((3, Gen.Long[0, 3]), (1, Gen.Long[0, long.MaxValue])),
        Gen.Frequency((3, Gen.Int[0, 3]), (1, Gen.Int[0, int.MaxValue])),
        (w, l) => new HlcTimestamp(w, l));

    /// <summary>An engine key with the (user key, timestamp) it should order by; a null timestamp is the intent key.</summary>
    private static readonly Gen<(byte[] User, HlcTimestamp? Ts)> AnyKey = Gen.Select(
        UserKey,
        Gen.Frequency((1, Gen.Const((HlcTimestamp?)null)), (4, Ts.Select(t => (HlcTimestamp?)t))),
        (k, t) => (k, t));

    [Fact]
    public void Engine_key_order_is_user_key_order_then_intent_then_newest_version_first()
    {
        Seeds.ForSeeds(Gen.Select(AnyKey, AnyKey), 5000, salt: 1, pair =>
        {
            var (a, b) = pair;
            var expected = NaiveCompare(a.User, b.User);
            if (expected == 0)
            {
                expected = (a.Ts, b.Ts) switch
                {
                    (null, null) => 0,
                    (null, _) => -1,
                    (_, null) => 1,
                    ({ } ta, { } tb) => -ta.CompareTo(tb), // newest first
                };
            }

            var actual = NaiveCompare(Encode(a), Encode(b));
            Assert.Equal(Math.Sign(expected), Math.Sign(actual));
        });
    }

    [Fact]
    public void Every_key_of_a_user_key_lies_in_its_span_and_spans_of_a_range_nest()
    {
        Seeds.ForSeeds(Gen.Select(AnyKey, UserKey, UserKey), 3000, salt: 2, t =>
        {
            var ((user, ts), start, end) = t;
            var key = Encode((user, ts));
            Assert.True(NaiveCompare(MvccKeys.KeyStart(user), key) <= 0);
            Assert.True(NaiveCompare(key, MvccKeys.KeyEnd(user)) < 0);
            Assert.True(NaiveCompare(MvccKeys.SpanStart, key) <= 0 && NaiveCompare(key, MvccKeys.SpanEnd) < 0);

            // The span of user keys [start, end) holds the key exactly when start <= user < end.
            var (lower, upper) = MvccKeys.Span(start, end);
            var inUserRange = NaiveCompare(start, user) <= 0 && NaiveCompare(user, end) < 0;
            var inEngineSpan = NaiveCompare(lower, key) <= 0 && NaiveCompare(key, upper) < 0;
            Assert.Equal(inUserRange, inEngineSpan);
        });
    }

    [Fact]
    public void Keys_decode_to_what_was_encoded()
    {
        Seeds.ForSeeds(AnyKey, 3000, salt: 3, k =>
        {
            var decoded = MvccKeys.Decode(Encode(k));
            Assert.Equal(Hex(k.User), Hex(decoded.UserKey));
            Assert.Equal(k.Ts, decoded.Timestamp);
            Assert.Equal(k.Ts is null, decoded.IsIntent);
        });
    }

    [Fact]
    public void The_layout_is_the_documented_one()
    {
        var ts = new HlcTimestamp(0x0102030405060708, 9);
        Assert.Equal("106100FF620000", Convert.ToHexString(MvccKeys.IntentKey([0x61, 0x00, 0x62])));
        Assert.Equal("10610001" + "FEFDFCFBFAF9F8F7" + "FFFFFFF6", Convert.ToHexString(MvccKeys.VersionKey([0x61], ts)));
        Assert.Equal("100000", Convert.ToHexString(MvccKeys.IntentKey([])));
        Assert.Equal("10610002", Convert.ToHexString(MvccKeys.KeyEnd([0x61])));
    }

    [Fact]
    public void User_keys_longer_than_4_KiB_are_rejected_with_their_length()
    {
        var longest = new byte[MvccKeys.MaxUserKeyLength];
        Assert.Equal(longest.Length, MvccKeys.Decode(MvccKeys.IntentKey(longest)).UserKey.Length);

        var tooLong = new byte[MvccKeys.MaxUserKeyLength + 1];
        var error = Assert.Throws<ArgumentException>(() => MvccKeys.VersionKey(tooLong, new HlcTimestamp(1, 0)));
        Assert.StartsWith("user key is 4097 bytes, more than the maximum of 4096 bytes", error.Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => MvccKeys.IntentKey(tooLong));
        Assert.Throws<ArgumentException>(() => new MvccStore(new Storage.MemoryEngine()).Get(tooLong, new HlcTimestamp(1, 0)));
        Assert.Throws<ArgumentException>(() => SystemKeys.RangeDescriptor(tooLong));
    }

    [Theory]
    [InlineData("")]
    [InlineData("11610000")] // wrong prefix
    [InlineData("1061")] // no terminator
    [InlineData("106100")] // 0x00 at the end
    [InlineData("10610002")] // unknown terminator
    [InlineData("1061000000")] // bytes after the intent terminator
    [InlineData("10610001FFFF")] // short timestamp
    [InlineData("10610001" + "7FFFFFFFFFFFFFFF" + "FFFFFFFF")] // timestamp with a negative wall part
    [InlineData("1061000100" + "FEFDFCFBFAF9F8F7" + "FFFFFFF6")] // long timestamp
    public void Corrupt_keys_are_rejected(string hex)
    {
        var error = Assert.Throws<FormatException>(() => MvccKeys.Decode(Convert.FromHexString(hex)));
        Assert.StartsWith("corrupt MVCC key", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Range_local_then_system_then_user_keys()
    {
        byte[][] ordered =
        [
            RangeKeys.Prefix(1),
            RangeKeys.AppliedState(1),
            RangeKeys.RangeDescriptor(1),
            RangeKeys.GcThreshold(1),
            RangeKeys.Lease(1),
            RangeKeys.AbortSpan(1, Guid.Empty),
            RangeKeys.AbortSpan(1, Guid.AllBitsSet),
            RangeKeys.End(1), // == Prefix(2)
            RangeKeys.Lease(2),
            RangeKeys.Lease(ulong.MaxValue),
            RangeKeys.End(ulong.MaxValue),
            SystemKeys.SpanStart,
            SystemKeys.NodeLiveness(1),
            SystemKeys.MetaSpanStart, // == RangeDescriptor([]), which addresses an empty range
            SystemKeys.RangeDescriptor([0x00]),
            SystemKeys.RangeDescriptor([0xFF, 0xFF, 0xFF]),
            SystemKeys.RangeDescriptor(null),
            SystemKeys.MetaSpanEnd,
            SystemKeys.SpanEnd,
            MvccKeys.SpanStart,
            MvccKeys.IntentKey([]),
            MvccKeys.VersionKey([0xFF, 0xFF], new HlcTimestamp(1, 0)),
            MvccKeys.SpanEnd,
        ];
        for (var i = 1; i < ordered.Length; i++)
        {
            Assert.True(NaiveCompare(ordered[i - 1], ordered[i]) < 0, $"{Hex(ordered[i - 1])} should sort before {Hex(ordered[i])}");
        }

        Assert.Equal("017200000000000000016C", Convert.ToHexString(RangeKeys.Lease(1)));
        Assert.All(new[] { RangeKeys.AppliedState(7), RangeKeys.Lease(7), RangeKeys.RangeDescriptor(7), RangeKeys.GcThreshold(7), RangeKeys.AbortSpan(7, Guid.AllBitsSet) }, k =>
            Assert.True(NaiveCompare(RangeKeys.Prefix(7), k) <= 0 && NaiveCompare(k, RangeKeys.End(7)) < 0));
        Assert.True(KeyLayout.RangeLocal < KeyLayout.System && KeyLayout.System < KeyLayout.UserData);
    }

    [Fact]
    public void A_meta_lookup_finds_the_range_holding_the_key()
    {
        // Ranges [] .. "c", "c" .. "f", "f" .. end, recorded under their end keys.
        var records = new SortedDictionary<byte[], string>(NaiveComparer)
        {
            [SystemKeys.RangeDescriptor(S("c"))] = "r1",
            [SystemKeys.RangeDescriptor(S("f"))] = "r2",
            [SystemKeys.RangeDescriptor(null)] = "r3",
        };

        string Lookup(byte[] key)
        {
            var (lower, upper) = SystemKeys.RangeLookupSpan(key);
            return records.First(r => NaiveCompare(r.Key, lower) >= 0 && NaiveCompare(r.Key, upper) < 0).Value;
        }

        Assert.Equal("r1", Lookup([]));
        Assert.Equal("r1", Lookup(S("b")));
        Assert.Equal("r1", Lookup(S("bzzz")));
        Assert.Equal("r2", Lookup(S("c"))); // end keys are exclusive
        Assert.Equal("r2", Lookup([.. S("c"), 0x00]));
        Assert.Equal("r3", Lookup(S("f")));
        Assert.Equal("r3", Lookup([0xFF, 0xFF, 0xFF, 0xFF]));
    }

    private static byte[] Encode((byte[] User, HlcTimestamp? Ts) key) =>
        key.Ts is { } ts ? MvccKeys.VersionKey(key.User, ts) : MvccKeys.IntentKey(key.User);
}
