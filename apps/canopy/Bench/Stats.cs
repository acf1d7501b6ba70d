using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;

namespace Canopy.Cli.Bench;

/// <summary>Latency samples of one writer (Stopwatch ticks), collected without locks and merged at the end.</summary>
internal sealed class LatencySamples
{
    private readonly List<long> _ticks = [];

    public int Count => _ticks.Count;

    public void Add(long ticks) => _ticks.Add(ticks);

    /// <summary>Merges the samples of every writer and summarises them (nearest-rank percentiles).</summary>
    public static LatencySummary Summarize(IEnumerable<LatencySamples> parts)
    {
        var all = parts.SelectMany(p => p._ticks).ToArray();
        if (all.Length == 0)
        {
            return default;
        }

        Array.Sort(all);
        return new LatencySummary(
            all.Length,
            ToMs(Percentile(all, 0.50)),
            ToMs(Percentile(all, 0.99)),
            ToMs((long)all.Average()),
            ToMs(all[^1]));
    }

    private static long Percentile(long[] sorted, double p)
    {
        var rank = (int)Math.Ceiling(p * sorted.Length);
        return sorted[Math.Clamp(rank - 1, 0, sorted.Length - 1)];
    }

    private static double ToMs(long ticks) => ticks * 1000.0 / Stopwatch.Frequency;
}

/// <summary>Summary of a set of latencies, in milliseconds.</summary>
internal readonly record struct LatencySummary(int Count, double P50Ms, double P99Ms, double MeanMs, double MaxMs)
{
    public JsonObject ToJson() => new()
    {
        ["samples"] = Count,
        ["p50_ms"] = Stats.Round(P50Ms, 3),
        ["p99_ms"] = Stats.Round(P99Ms, 3),
        ["mean_ms"] = Stats.Round(MeanMs, 3),
        ["max_ms"] = Stats.Round(MaxMs, 3),
    };
}

/// <summary>Min / median / max of a few trials.</summary>
internal readonly record struct Spread(int Count, double Min, double Median, double Max, double Mean)
{
    public static Spread Of(IEnumerable<double> values)
    {
        var v = values.OrderBy(x => x).ToArray();
        if (v.Length == 0)
        {
            return default;
        }

        var median = v.Length % 2 == 1 ? v[v.Length / 2] : (v[(v.Length / 2) - 1] + v[v.Length / 2]) / 2;
        return new Spread(v.Length, v[0], median, v[^1], v.Average());
    }

    public JsonObject ToJson(int digits = 1) => new()
    {
        ["n"] = Count,
        ["min"] = Stats.Round(Min, digits),
        ["median"] = Stats.Round(Median, digits),
        ["max"] = Stats.Round(Max, digits),
        ["mean"] = Stats.Round(Mean, digits),
    };
}

internal static class Stats
{
    public static double Round(double value, int digits) => double.IsFinite(value) ? Math.Round(value, digits) : 0;

    public static string F(double value, int digits = 1) => value.ToString("N" + digits.ToString(CultureInfo.InvariantCulture), CultureInfo.InvariantCulture);

    public static string Ms(double ms) => ms >= 100 ? F(ms, 0) : ms >= 10 ? F(ms, 1) : F(ms, 2);

    /// <summary>CPU time used so far by this whole process (every thread: all in-process servers and the load).</summary>
    public static TimeSpan ProcessCpu()
    {
        using var p = Process.GetCurrentProcess();
        return p.TotalProcessorTime;
    }

    public static double Seconds(long fromTimestamp, long toTimestamp) => (toTimestamp - fromTimestamp) / (double)Stopwatch.Frequency;

    public static double MsSince(long fromTimestamp, long toTimestamp) => Seconds(fromTimestamp, toTimestamp) * 1000;
}

/// <summary>A plain text table: first column left-aligned, the others right-aligned.</summary>
internal sealed class TextTable(string title, params string[] headers)
{
    private readonly List<string[]> _rows = [];

    public void Add(params string[] cells) => _rows.Add(cells);

    public void Write(TextWriter output)
    {
        var widths = new int[headers.Length];
        foreach (var row in _rows.Prepend(headers))
        {
            for (var i = 0; i < widths.Length && i < row.Length; i++)
            {
                widths[i] = Math.Max(widths[i], row[i].Length);
            }
        }

        output.WriteLine();
        output.WriteLine(title);
        WriteRow(output, headers, widths);
        output.WriteLine(string.Join("  ", widths.Select(w => new string('-', w))));
        foreach (var row in _rows)
        {
            WriteRow(output, row, widths);
        }
    }

    private static void WriteRow(TextWriter output, string[] cells, int[] widths)
    {
        var parts = new string[widths.Length];
        for (var i = 0; i < widths.Length; i++)
        {
            var c = i < cells.Length ? cells[i] : "";
            parts[i] = i == 0 ? c.PadRight(widths[i]) : c.PadLeft(widths[i]);
        }

        output.WriteLine(string.Join("  ", parts).TrimEnd());
    }
}
