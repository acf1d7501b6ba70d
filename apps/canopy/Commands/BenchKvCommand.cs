using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using Canopy.Cli.Bench;

namespace Canopy.Cli.Commands;

/// <summary>
/// <c>canopy bench kv</c>: the leader grid end to end (see <see cref="KvScenario"/>): its own cluster of real
/// `canopy start` processes on 127.0.0.1 with temporary stores, initialised, then write latency and throughput
/// through CanopyClient (one range, and spread over every user range), reads, and SIGKILL → first successful write.
/// Results and the comparison with etcd: docs/benchmarks.md, "Leader grid (KV)".
/// </summary>
public static class BenchKvCommand
{
    public static Command Build()
    {
        var servers = Options.Int("--servers", "Servers of the cluster it starts (the failover needs at least 3).", 3, min: 1);
        var duration = Options.Duration("--duration", "Measured time of each load row (after a 1 s warm-up); reads get half of it.", TimeSpan.FromSeconds(10));
        var concurrency = new Option<int[]>("--concurrency")
        {
            Description = "Closed-loop clients of the throughput rows, comma-separated. [default: 1,16,64]",
            HelpName = "list",
            CustomParser = result =>
            {
                var text = result.Tokens.Count > 0 ? result.Tokens[^1].Value : "";
                var values = new List<int>();
                foreach (var part in text.Split(',', StringSplitOptions.TrimEntries))
                {
                    if (!int.TryParse(part, NumberStyles.None, CultureInfo.InvariantCulture, out var c) || c < 1 || c > 1024)
                    {
                        result.AddError($"invalid value '{text}' for --concurrency: expected whole numbers from 1 to 1024, comma-separated (e.g. 1,16,64)");
                        return [];
                    }

                    values.Add(c);
                }

                return [.. values.Distinct()];
            },
        };
        var trials = Options.Int("--trials", "Failover trials (SIGKILL of the written range's leaseholder each).", 5, min: 1);
        var json = new Option<bool>("--json") { Description = "Print one JSON object with every number on stdout (progress and tables go to stderr)." };

        var kv = new Command("kv", "Benchmark the leader grid end to end: real `canopy start` processes, writes and reads through CanopyClient, SIGKILL of a leaseholder.")
        {
            servers, duration, concurrency, trials, json,
        };

        kv.SetAction(async (parseResult, ct) =>
        {
            var n = parseResult.GetValue(servers);
            var levels = parseResult.GetValue(concurrency) is { Length: > 0 } given ? given : [1, 16, 64];
            var ctx = new BenchContext(
                parseResult.InvocationConfiguration.Output,
                parseResult.InvocationConfiguration.Error,
                parseResult.GetValue(json),
                parseResult.GetValue(duration) ?? TimeSpan.FromSeconds(10),
                parseResult.GetValue(trials),
                failoverElectionTicks: 10,
                ct);

            var command = $"canopy bench kv --servers {n} --duration {Duration.Format(ctx.Duration)} --concurrency {string.Join(',', levels)} --trials {ctx.Trials}{(ctx.Json ? " --json" : "")}";
            ctx.Progress($"{command} on {Environment.ProcessorCount} cores ({CpuModel()})");
            var sw = Stopwatch.StartNew();
            var result = new JsonObject
            {
                ["benchmark"] = "canopy bench kv",
                ["command"] = command,
                ["date_utc"] = DateTime.UtcNow.ToString("yyyy-MM-ddTHH:mm:ssZ", CultureInfo.InvariantCulture),
                ["machine"] = new JsonObject
                {
                    ["cores"] = Environment.ProcessorCount,
                    ["cpu"] = CpuModel(),
                    ["os"] = RuntimeInformation.OSDescription,
                    ["runtime"] = RuntimeInformation.FrameworkDescription,
                    ["load_average"] = LoadAverage(),
                },
                ["duration_s"] = ctx.Duration.TotalSeconds,
                ["concurrency"] = new JsonArray([.. levels.Select(c => (JsonNode)c)]),
                ["value_bytes"] = KvScenario.ValueBytes,
                ["key_bytes"] = KvScenario.KeyBytes,
            };

            try
            {
                result["kv"] = await KvScenario.RunAsync(ctx, n, levels);
            }
            catch (InvalidOperationException ex)
            {
                throw new CliException(ex.Message);
            }

            result["elapsed_s"] = Math.Round(sw.Elapsed.TotalSeconds, 1);
            ctx.Progress($"done in {sw.Elapsed.TotalSeconds:F0} s");
            if (ctx.Json)
            {
                parseResult.InvocationConfiguration.Output.WriteLine(result.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            }

            return ExitCodes.Success;
        });

        return kv;
    }

    private static string CpuModel()
    {
        try
        {
            if (File.Exists("/proc/cpuinfo"))
            {
                var line = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal));
                if (line is not null && line.IndexOf(':', StringComparison.Ordinal) is var i and >= 0)
                {
                    return line[(i + 1)..].Trim();
                }
            }
        }
        catch (IOException)
        {
        }

        return RuntimeInformation.ProcessArchitecture.ToString();
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
