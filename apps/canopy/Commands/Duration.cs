using System.Globalization;

namespace Canopy.Cli.Commands;

/// <summary>
/// Durations on the command line: a number and a unit, optionally repeated — 500ms, 20s, 1.5s, 2m, 1h, 1m30s.
/// Units: ms, s, m, h. A bare number is refused (is 20 seconds or milliseconds?).
/// </summary>
public static class Duration
{
    /// <summary>Parses <paramref name="text"/>; on failure <paramref name="error"/> says why, in one line.</summary>
    public static bool TryParse(string text, out TimeSpan value, out string error)
    {
        value = TimeSpan.Zero;
        error = "";
        var s = text.Trim();
        if (s.Length == 0)
        {
            error = "empty duration (expected e.g. 20s, 500ms, 2m)";
            return false;
        }

        var totalMs = 0.0;
        var i = 0;
        while (i < s.Length)
        {
            var start = i;
            while (i < s.Length && (char.IsAsciiDigit(s[i]) || s[i] == '.'))
            {
                i++;
            }

            if (i == start || !double.TryParse(s.AsSpan(start, i - start), NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var number))
            {
                error = $"'{text}' is not a duration (expected e.g. 20s, 500ms, 2m)";
                return false;
            }

            var unitStart = i;
            while (i < s.Length && char.IsAsciiLetter(s[i]))
            {
                i++;
            }

            var unit = s[unitStart..i].ToLowerInvariant();
            double factor;
            switch (unit)
            {
                case "ms":
                    factor = 1;
                    break;
                case "s":
                    factor = 1_000;
                    break;
                case "m":
                    factor = 60_000;
                    break;
                case "h":
                    factor = 3_600_000;
                    break;
                case "":
                    error = $"'{text}' has no unit (expected e.g. {s[start..i]}s or {s[start..i]}ms)";
                    return false;
                default:
                    error = $"'{text}' has an unknown unit '{unit}' (use ms, s, m or h)";
                    return false;
            }

            totalMs += number * factor;
        }

        if (totalMs > TimeSpan.MaxValue.TotalMilliseconds / 2)
        {
            error = $"'{text}' is too long";
            return false;
        }

        value = TimeSpan.FromMilliseconds(totalMs);
        return true;
    }

    /// <summary>The shortest exact form in one unit: 20s, 500ms, 2m, 1h, 90s.</summary>
    public static string Format(TimeSpan value)
    {
        var ms = (long)value.TotalMilliseconds;
        if (ms != 0 && ms % 3_600_000 == 0)
        {
            return string.Create(CultureInfo.InvariantCulture, $"{ms / 3_600_000}h");
        }

        if (ms != 0 && ms % 60_000 == 0)
        {
            return string.Create(CultureInfo.InvariantCulture, $"{ms / 60_000}m");
        }

        if (ms % 1_000 == 0)
        {
            return string.Create(CultureInfo.InvariantCulture, $"{ms / 1_000}s");
        }

        return string.Create(CultureInfo.InvariantCulture, $"{ms}ms");
    }
}
