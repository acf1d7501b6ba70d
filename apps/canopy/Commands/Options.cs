using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;

namespace Canopy.Cli.Commands;

/// <summary>Option factories whose bad values give one clear line ("invalid value 'x' for --seeds: ...").</summary>
public static class Options
{
    /// <summary>An integer option with a minimum (and optionally a maximum) and a default shown in the help.</summary>
    public static Option<int> Int(string name, string description, int defaultValue, int min, int max = int.MaxValue)
    {
        return new Option<int>(name)
        {
            Description = description,
            HelpName = "n",
            DefaultValueFactory = _ => defaultValue,
            CustomParser = result =>
            {
                var text = Single(result);
                if (!int.TryParse(text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var value))
                {
                    result.AddError($"invalid value '{text}' for {name}: expected a whole number");
                    return default;
                }

                if (value < min)
                {
                    result.AddError($"invalid value '{text}' for {name}: must be at least {min}");
                    return default;
                }

                if (value > max)
                {
                    result.AddError($"invalid value '{text}' for {name}: must be at most {max}");
                    return default;
                }

                return value;
            },
        };
    }

    /// <summary>
    /// <c>--inject-delay-ms</c> of the start commands (benchmarks only): a one-way delay added to every message the
    /// server sends to another server (Raft frames and server-to-server requests), milliseconds, 0 to 10,000.
    /// </summary>
    public static Option<int> InjectDelayMs() =>
        Int("--inject-delay-ms", "Benchmarks only: one-way delay added to every message this server sends to another server (Raft and server-to-server requests), in milliseconds. Never use it in production.", 0, min: 0, max: 10_000);

    /// <summary>An optional unsigned 64-bit option (e.g. a seed); null when absent.</summary>
    public static Option<ulong?> ULong(string name, string description)
    {
        return new Option<ulong?>(name)
        {
            Description = description,
            HelpName = "n",
            CustomParser = result =>
            {
                var text = Single(result);
                if (!ulong.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var value))
                {
                    result.AddError($"invalid value '{text}' for {name}: expected a whole number >= 0");
                    return null;
                }

                return value;
            },
        };
    }

    /// <summary>A duration option (20s, 500ms, 2m); must be positive; null when absent.</summary>
    public static Option<TimeSpan?> Duration(string name, string description, TimeSpan defaultValue)
    {
        return new Option<TimeSpan?>(name)
        {
            Description = $"{description} [default: {Commands.Duration.Format(defaultValue)}]",
            HelpName = "duration",
            CustomParser = result =>
            {
                var text = Single(result);
                if (!Commands.Duration.TryParse(text, out var value, out var error))
                {
                    result.AddError($"invalid value for {name}: {error}");
                    return null;
                }

                if (value <= TimeSpan.Zero)
                {
                    result.AddError($"invalid value '{text}' for {name}: must be positive");
                    return null;
                }

                return value;
            },
        };
    }

    private static string Single(ArgumentResult result) => result.Tokens.Count > 0 ? result.Tokens[^1].Value : "";
}
