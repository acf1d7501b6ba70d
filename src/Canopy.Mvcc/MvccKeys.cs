using Canopy.Clock;

namespace Canopy.Mvcc;

/// <summary>
/// The storage-engine keys of MVCC user data (DESIGN §4).
///
/// Scheme (every user-data key starts with <see cref="Prefix"/> 0x10, after range-local 0x01 and system 0x02 keys):
/// <code>
///   intent (metadata) key   0x10 ‖ escaped(userKey) ‖ 0x00 0x00
///   version key             0x10 ‖ escaped(userKey) ‖ 0x00 0x01 ‖ ~timestamp (12 bytes, every bit inverted)
///   escaped(k)              k with every 0x00 byte written as 0x00 0xFF
/// </code>
/// Guarantees (property-tested in MvccKeyTests):
/// - Order: for user keys a &lt; b (unsigned bytes, a prefix first), every engine key of a sorts before every engine key
///   of b. Within one user key the intent key comes first, then the versions newest first (the inverted big-endian
///   timestamp puts larger timestamps first). Why: after the common part of escaped(a) and escaped(b), a's next byte
///   is either a terminator 0x00 0x00/0x01, which sorts below any non-zero byte of b and below b's escaped zero 0x00 0xFF,
///   or a byte that already differs from b's in the same direction as in the user keys.
/// - Unambiguous: a terminator (0x00 followed by 0x00 or 0x01) never occurs inside escaped(k), so every engine key decodes
///   to exactly one (user key, intent | version at timestamp); <see cref="Decode"/> rejects anything else.
/// - The keys of one user key form one contiguous span [<see cref="KeyStart"/>, <see cref="KeyEnd"/>), and the keys of the
///   user keys in [start, end) form the span [KeyStart(start), KeyStart(end)).
/// - User keys are arbitrary bytes (the empty key included) of at most <see cref="MaxUserKeyLength"/> bytes; a longer
///   key gives an <see cref="ArgumentException"/> that says how long it was.
/// </summary>
public static class MvccKeys
{
    /// <summary>The longest user key, in bytes.</summary>
    public const int MaxUserKeyLength = 4096;

    /// <summary>First byte of every MVCC user-data key.</summary>
    public const byte Prefix = 0x10;

    private const byte Escape = 0x00;
    private const byte EscapedZero = 0xFF;
    private const byte IntentTerminator = 0x00;
    private const byte VersionTerminator = 0x01;

    /// <summary>The smallest engine key of user data (inclusive lower bound of the whole MVCC key space).</summary>
    public static byte[] SpanStart => [Prefix];

    /// <summary>The first engine key after all user data (exclusive upper bound of the whole MVCC key space).</summary>
    public static byte[] SpanEnd => [Prefix + 1];

    /// <summary>Throws an <see cref="ArgumentException"/> naming <paramref name="paramName"/> if the user key is too long.</summary>
    public static void ValidateUserKey(ReadOnlySpan<byte> userKey, string paramName)
    {
        if (userKey.Length > MaxUserKeyLength)
        {
            throw new ArgumentException($"user key is {userKey.Length} bytes, more than the maximum of {MaxUserKeyLength} bytes", paramName);
        }
    }

    /// <summary>The intent (metadata) key of <paramref name="userKey"/>: its smallest engine key.</summary>
    public static byte[] IntentKey(ReadOnlySpan<byte> userKey) => Build(userKey, IntentTerminator, timestampBytes: 0, out _);

    /// <summary>The key of the version of <paramref name="userKey"/> at <paramref name="timestamp"/>.</summary>
    public static byte[] VersionKey(ReadOnlySpan<byte> userKey, HlcTimestamp timestamp)
    {
        var key = Build(userKey, VersionTerminator, HlcTimestamp.EncodedLength, out var at);
        var ts = key.AsSpan(at);
        timestamp.EncodeTo(ts);
        for (var i = 0; i < ts.Length; i++)
        {
            ts[i] = (byte)~ts[i];
        }

        return key;
    }

    /// <summary>The first engine key of <paramref name="userKey"/> (its intent key): inclusive lower bound of its span.</summary>
    public static byte[] KeyStart(ReadOnlySpan<byte> userKey) => IntentKey(userKey);

    /// <summary>The first engine key after every key of <paramref name="userKey"/>: exclusive upper bound of its span.</summary>
    public static byte[] KeyEnd(ReadOnlySpan<byte> userKey) => Build(userKey, VersionTerminator + 1, timestampBytes: 0, out _);

    /// <summary>The first version key of <paramref name="userKey"/> (the newest possible): lower bound of its versions, after its intent key.</summary>
    internal static byte[] VersionsStart(ReadOnlySpan<byte> userKey) => Build(userKey, VersionTerminator, timestampBytes: 0, out _);

    /// <summary>
    /// The engine span of the user keys in [<paramref name="startKey"/>, <paramref name="endKey"/>); a null end means
    /// "to the end of user data".
    /// </summary>
    public static (byte[] Lower, byte[] Upper) Span(ReadOnlySpan<byte> startKey, byte[]? endKey) =>
        (KeyStart(startKey), endKey is null ? SpanEnd : KeyStart(endKey));

    /// <summary>Decodes an engine key of user data.</summary>
    /// <exception cref="FormatException">It is not an intent or version key of this scheme.</exception>
    public static MvccKey Decode(ReadOnlySpan<byte> engineKey)
    {
        var terminator = Parse(engineKey, out var isIntent, out var timestamp);
        return new MvccKey(Unescape(engineKey[1..terminator]), isIntent ? null : timestamp);
    }

    /// <summary>
    /// Validates <paramref name="engineKey"/> and returns the index of its terminator (so [0, index) identifies the user
    /// key, comparable between keys without unescaping), whether it is an intent key, and a version's timestamp.
    /// </summary>
    internal static int Parse(ReadOnlySpan<byte> engineKey, out bool isIntent, out HlcTimestamp timestamp)
    {
        if (engineKey.IsEmpty || engineKey[0] != Prefix)
        {
            throw Corrupt(engineKey, "it does not start with the user-data prefix 0x10");
        }

        // Find the terminator: the first 0x00 not followed by the escape continuation 0xFF.
        var i = 1;
        while (true)
        {
            var zero = engineKey[i..].IndexOf(Escape);
            if (zero < 0 || i + zero + 1 >= engineKey.Length)
            {
                throw Corrupt(engineKey, "it has no terminator");
            }

            i += zero;
            if (engineKey[i + 1] != EscapedZero)
            {
                break;
            }

            i += 2;
        }

        var kind = engineKey[i + 1];
        if (kind == IntentTerminator && engineKey.Length == i + 2)
        {
            isIntent = true;
            timestamp = default;
            return i;
        }

        if (kind != VersionTerminator || engineKey.Length != i + 2 + HlcTimestamp.EncodedLength)
        {
            throw Corrupt(engineKey, $"terminator 0x00 0x{kind:X2} at offset {i} is followed by {engineKey.Length - i - 2} bytes");
        }

        Span<byte> ts = stackalloc byte[HlcTimestamp.EncodedLength];
        engineKey[(i + 2)..].CopyTo(ts);
        for (var j = 0; j < ts.Length; j++)
        {
            ts[j] = (byte)~ts[j];
        }

        try
        {
            timestamp = HlcTimestamp.Decode(ts);
        }
        catch (FormatException e)
        {
            throw Corrupt(engineKey, e.Message);
        }

        isIntent = false;
        return i;
    }

    private static byte[] Build(ReadOnlySpan<byte> userKey, byte terminator, int timestampBytes, out int timestampAt)
    {
        ValidateUserKey(userKey, nameof(userKey));
        var zeros = userKey.Count(Escape);
        var key = new byte[1 + userKey.Length + zeros + 2 + timestampBytes];
        key[0] = Prefix;
        var at = 1;
        foreach (var b in userKey)
        {
            key[at++] = b;
            if (b == Escape)
            {
                key[at++] = EscapedZero;
            }
        }

        key[at++] = Escape;
        key[at++] = terminator;
        timestampAt = at;
        return key;
    }

    private static byte[] Unescape(ReadOnlySpan<byte> escaped)
    {
        var result = new byte[escaped.Length - escaped.Count(Escape)];
        var at = 0;
        for (var i = 0; i < escaped.Length; i++)
        {
            result[at++] = escaped[i];
            if (escaped[i] == Escape)
            {
                i++; // Skip the 0xFF that follows (Parse checked it).
            }
        }

        return result;
    }

    private static FormatException Corrupt(ReadOnlySpan<byte> engineKey, string why)
    {
        var shown = engineKey.Length <= 64 ? Convert.ToHexString(engineKey) : Convert.ToHexString(engineKey[..64]) + "…";
        return new FormatException($"corrupt MVCC key {shown}: {why}");
    }
}

/// <summary>A decoded MVCC engine key: the user key and, for a version key, its timestamp (null for the intent key).</summary>
public readonly record struct MvccKey(byte[] UserKey, HlcTimestamp? Timestamp)
{
    /// <summary>True for the intent (metadata) key of <see cref="UserKey"/>.</summary>
    public bool IsIntent => Timestamp is null;
}
