using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using Canopy.Cli.Bench;

namespace Canopy.Cli.Commands;

/// <summary>
/// <c>canopy bench commit</c>: commit latency of one-phase, parallel-commit and two-phase transactions as a client sees
/// it, on its own cluster of real `canopy start` processes with an injected one-way delay between servers (see
/// <see cref="CommitScenario"/>). With --json, stdout holds exactly one JSON object (progress and the table go to
/// stderr): {"delay_ms": D, "onephase": {"p50_ms", "p99_ms", ...}, "parallel": {...}, "twophase": {...}, "ratios": {...}, ...}.
/// </summary>
public static class BenchCommitCommand
{
    public static Command Build()
    {
        var servers = Options.Int("--servers", "Servers of the cluster it starts.", 3, min: 1);
        var delay = Options.Int("--delay-ms", "One-way delay injected between servers (`canopy start --inject-delay-ms`), in milliseconds.", 2, min: 0, max: 10_000);
        var count = Options.Int("--count", "Measured rounds (each runs one transaction of every kind), unless --duration passes first.", 300, min: 1);
        var duration = Options.Duration("--duration", "Longest measured time; the run stops at --count rounds or this, whichever comes first.", TimeSpan.FromSeconds(90));
        var warmup = Options.Int("--warmup", "Unmeasured rounds first (JIT, connections, caches).", 30, min: 0);
        var gap = Options.Int("--gap-ms", "Pause after each transaction, in milliseconds (lets the previous commit's asynchronous cleanup finish).", 0, min: 0, max: 10_000);
        var json = new Option<bool>("--json") { Description = "Print one JSON object with every number on stdout (progress and the table go to stderr)." };

        var commit = new Command("commit", "Benchmark transaction commit latency: one-phase vs parallel commits vs two-phase, on real `canopy start` processes with an injected delay between servers.")
        {
            servers, delay, count, duration, warmup, gap, json,
        };

        commit.SetAction(async (parseResult, ct) =>
        {
            var settings = new CommitScenario.Settings(
                parseResult.GetValue(servers),
                parseResult.GetValue(delay),
                parseResult.GetValue(count),
                parseResult.GetValue(duration) ?? TimeSpan.FromSeconds(90),
                parseResult.GetValue(warmup),
                parseResult.GetValue(gap));
            var ctx = new BenchContext(
                parseResult.InvocationConfiguration.Output,
                parseResult.InvocationConfiguration.Error,
                parseResult.GetValue(json),
                settings.MaxMeasured,
                trials: 0,
                failoverElectionTicks: 10,
                ct);

            var command = $"canopy bench commit --servers {settings.Servers} --delay-ms {settings.DelayMs} --count {settings.Rounds} --duration {Duration.Format(settings.MaxMeasured)} --warmup {settings.WarmupRounds}" +
                $"{(settings.GapMs > 0 ? $" --gap-ms {settings.GapMs}" : "")}{(ctx.Json ? " --json" : "")}";
            ctx.Progress($"{command} on {Environment.ProcessorCount} cores");
            var sw = Stopwatch.StartNew();
            JsonObject result;
            try
            {
                result = await CommitScenario.RunAsync(ctx, settings);
            }
            catch (InvalidOperationException ex)
            {
                throw new CliException(ex.Message);
            }

            result["benchmark"] = "canopy bench commit";
            result["command"] = command;
            result["date_utc"] = DateTime.UtcNow.ToString("yyyy-MM-ddTHH:mm:ssZ", CultureInfo.InvariantCulture);
            result["machine"] = new JsonObject
            {
                ["cores"] = Environment.ProcessorCount,
                ["os"] = RuntimeInformation.OSDescription,
                ["runtime"] = RuntimeInformation.FrameworkDescription,
                ["load_average"] = LoadAverage(),
            };
            result["elapsed_s"] = Math.Round(sw.Elapsed.TotalSeconds, 1);
            ctx.Progress($"done in {sw.Elapsed.TotalSeconds:F0} s");
            if (ctx.Json)
            {
                parseResult.InvocationConfiguration.Output.WriteLine(result.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            }

            return ExitCodes.Success;
        });

        return commit;
    }

    private static string LoadAverage()
    {
        try
        {
            return File.Exists("/proc/loadavg") ? string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3)) : "";
        }
        catch (IOException)
        {
            return "";
        }
    }
}
