using CsCheck;

namespace Canopy.Clock.Tests;

/// <summary>
/// <see cref="HlcTimestamp"/>: the total order, its exact successor/predecessor, the byte encoding whose unsigned byte
/// order is the timestamp order, and the <c>wall.logical</c> text form. Property tests run over fixed seeds.
/// </summary>
public sealed class HlcTimestampTests
{
    /// <summary>Timestamps biased to collide on either part and to hit the edges (0, carries, maxima, sign bits).</summary>
    internal static readonly Gen<HlcTimestamp> AnyTimestamp = Gen.Select(
        Gen.Frequency(
            (3, Gen.Long[0, 3]),
            (2, Gen.OneOf(Gen.Const(long.MaxValue), Gen.Const(long.MaxValue - 1), Gen.Const(255L), Gen.Const(256L), Gen.Const(1L << 32))),
            (5, Gen.Long[0, long.MaxValue])),
        Gen.Frequency(
            (3, Gen.Int[0, 3]),
            (2, Gen.OneOf(Gen.Const(int.MaxValue), Gen.Const(int.MaxValue - 1), Gen.Const(255), Gen.Const(256))),
            (5, Gen.Int[0, int.MaxValue])),
        (w, l) => new HlcTimestamp(w, l));

    [Fact]
    public void Encoding_order_equals_timestamp_order()
    {
        Seeds.ForSeeds(Gen.Select(AnyTimestamp, AnyTimestamp), 3000, salt: 1, pair =>
        {
            var (a, b) = pair;
            var byBytes = Math.Sign(a.ToBytes().AsSpan().SequenceCompareTo(b.ToBytes()));
            Assert.Equal(Math.Sign(a.CompareTo(b)), byBytes);
            Assert.Equal(a == b, byBytes == 0);
            Assert.Equal(a < b, byBytes < 0);
            Assert.Equal(a >= b, byBytes >= 0);
        });
    }

    [Fact]
    public void Encoding_round_trips_and_is_big_endian()
    {
        Seeds.ForSeeds(AnyTimestamp, 2000, salt: 2, t =>
        {
            Span<byte> buffer = stackalloc byte[HlcTimestamp.EncodedLength + 3];
            t.EncodeTo(buffer);
            Assert.Equal(t, HlcTimestamp.Decode(buffer[..HlcTimestamp.EncodedLength]));
        });

        Assert.Equal("0000000000000102" + "00000003", Convert.ToHexString(new HlcTimestamp(0x102, 3).ToBytes()));
    }

    [Fact]
    public void Decode_rejects_wrong_length_and_negative_parts()
    {
        Assert.Throws<FormatException>(() => HlcTimestamp.Decode(new byte[11]));
        Assert.Throws<FormatException>(() => HlcTimestamp.Decode(new byte[13]));
        var negativeWall = new byte[12];
        negativeWall[0] = 0x80;
        Assert.Throws<FormatException>(() => HlcTimestamp.Decode(negativeWall));
        var negativeLogical = new byte[12];
        negativeLogical[8] = 0xFF;
        Assert.Throws<FormatException>(() => HlcTimestamp.Decode(negativeLogical));
        Assert.Throws<ArgumentException>(() => HlcTimestamp.Zero.EncodeTo(new byte[11]));
    }

    [Fact]
    public void Text_form_round_trips()
    {
        Seeds.ForSeeds(AnyTimestamp, 2000, salt: 3, t => Assert.Equal(t, HlcTimestamp.Parse(t.ToString())));

        Assert.Equal("1732520000123456789.3", new HlcTimestamp(1732520000123456789, 3).ToString());
        Assert.Equal(new HlcTimestamp(1732520000123456789, 3), HlcTimestamp.Parse("1732520000123456789.3"));
        Assert.Equal("0.0", HlcTimestamp.Zero.ToString());
        Assert.Equal("9223372036854775807.2147483647", HlcTimestamp.MaxValue.ToString());
    }

    [Theory]
    [InlineData("")]
    [InlineData(".")]
    [InlineData("1")]
    [InlineData("1.")]
    [InlineData(".1")]
    [InlineData("-1.0")]
    [InlineData("1.-1")]
    [InlineData("+1.0")]
    [InlineData("1.2.3")]
    [InlineData(" 1.2")]
    [InlineData("1.2 ")]
    [InlineData("1,2")]
    [InlineData("1_000.2")]
    [InlineData("9223372036854775808.0")]
    [InlineData("1.2147483648")]
    [InlineData("0x10.0")]
    public void Parse_rejects_anything_but_wall_dot_logical(string text)
    {
        Assert.False(HlcTimestamp.TryParse(text, out _));
        var error = Assert.Throws<FormatException>(() => HlcTimestamp.Parse(text));
        Assert.Contains("wall.logical", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Next_and_Prev_are_the_exact_neighbours()
    {
        Seeds.ForSeeds(AnyTimestamp, 2000, salt: 4, t =>
        {
            if (t != HlcTimestamp.MaxValue)
            {
                var next = t.Next();
                Assert.True(next > t);
                Assert.Equal(t, next.Prev());
            }

            if (t != HlcTimestamp.Zero)
            {
                var prev = t.Prev();
                Assert.True(prev < t);
                Assert.Equal(t, prev.Next());
            }
        });

        Assert.Equal(new HlcTimestamp(5, 8), new HlcTimestamp(5, 7).Next());
        Assert.Equal(new HlcTimestamp(6, 0), new HlcTimestamp(5, int.MaxValue).Next());
        Assert.Equal(new HlcTimestamp(4, int.MaxValue), new HlcTimestamp(5, 0).Prev());
        Assert.Throws<InvalidOperationException>(() => HlcTimestamp.MaxValue.Next());
        Assert.Throws<InvalidOperationException>(() => HlcTimestamp.Zero.Prev());
    }

    [Fact]
    public void Add_moves_the_wall_part_and_keeps_the_logical_part()
    {
        var t = new HlcTimestamp(1_000_000_000, 7);
        Assert.Equal(new HlcTimestamp(1_500_000_000, 7), t.Add(TimeSpan.FromMilliseconds(500)));
        Assert.Equal(new HlcTimestamp(999_999_900, 7), t.Add(TimeSpan.FromTicks(-1)));
        Assert.Throws<ArgumentOutOfRangeException>(() => t.Add(TimeSpan.FromSeconds(-2)));
        Assert.Throws<ArgumentOutOfRangeException>(() => HlcTimestamp.MaxValue.Add(TimeSpan.FromTicks(1)));
    }

    [Fact]
    public void Zero_is_default_and_parts_cannot_be_negative()
    {
        Assert.Equal(HlcTimestamp.Zero, default);
        Assert.True(default(HlcTimestamp).IsZero);
        Assert.Throws<ArgumentOutOfRangeException>(() => new HlcTimestamp(-1, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => new HlcTimestamp(0, -1));
        Assert.Equal(new HlcTimestamp(3, 1), HlcTimestamp.Max(new HlcTimestamp(3, 1), new HlcTimestamp(2, 9)));
        Assert.Equal(new HlcTimestamp(2, 9), HlcTimestamp.Min(new HlcTimestamp(3, 1), new HlcTimestamp(2, 9)));
    }
}
