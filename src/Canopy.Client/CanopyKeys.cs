namespace Canopy.Client;

using System.Text;

/// <summary>Key rules of the client API and a readable form of keys and values.</summary>
public static class CanopyKeys
{
    /// <summary>Longest key (protocol limit).</summary>
    public const int MaxKeyBytes = 4096;

    /// <summary>Largest value (protocol limit).</summary>
    public const int MaxValueBytes = 8 * 1024 * 1024;

    /// <summary>Keys starting with 0x00 are the system's; the user key space starts here.</summary>
    public static ReadOnlySpan<byte> UserKeyspaceStart => [0x01];

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary>Why <paramref name="key"/> cannot be used as a user key, or null when it can.</summary>
    public static string? Validate(ReadOnlySpan<byte> key)
    {
        if (key.IsEmpty)
        {
            return "keys must not be empty";
        }

        if (key[0] == 0x00)
        {
            return "keys starting with byte 0x00 are reserved for the system";
        }

        return key.Length > MaxKeyBytes ? $"a key of {key.Length} bytes is over the {MaxKeyBytes}-byte limit" : null;
    }

    /// <summary>Why <paramref name="value"/> cannot be stored, or null when it can.</summary>
    public static string? ValidateValue(ReadOnlySpan<byte> value) =>
        value.Length > MaxValueBytes ? $"a value of {value.Length} bytes is over the {MaxValueBytes}-byte limit" : null;

    /// <summary>
    /// The bytes as text when they are valid UTF-8 without control characters (and do not themselves look like hex),
    /// else as 0x-hex. Empty gives "".
    /// </summary>
    public static string Format(ReadOnlySpan<byte> bytes)
    {
        if (bytes.IsEmpty)
        {
            return string.Empty;
        }

        if (TryText(bytes, out var text) && !text.StartsWith("0x", StringComparison.Ordinal))
        {
            foreach (var c in text)
            {
                if (char.IsControl(c))
                {
                    return Hex(bytes);
                }
            }

            return text;
        }

        return Hex(bytes);
    }

    /// <summary>The bytes as UTF-8 text, if they are valid UTF-8.</summary>
    public static bool TryText(ReadOnlySpan<byte> bytes, out string text)
    {
        try
        {
            text = StrictUtf8.GetString(bytes);
            return true;
        }
        catch (DecoderFallbackException)
        {
            text = string.Empty;
            return false;
        }
    }

    /// <summary>"0x" and lower-case hex digits.</summary>
    public static string Hex(ReadOnlySpan<byte> bytes) => "0x" + Convert.ToHexString(bytes).ToLowerInvariant();

    internal static ArgumentException Invalid(string why) => new(why);
}
