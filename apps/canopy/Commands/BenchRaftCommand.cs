using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using Canopy.Cli.Bench;

namespace Canopy.Cli.Commands;

/// <summary>
/// <c>canopy bench raft</c>: benchmarks of the Raft layer alone (3 servers, 3 replicas per group, RocksDB stores in
/// temporary directories, TCP on 127.0.0.1). Scenarios: single (one group: 1, 64, 256 proposals in flight), multi
/// (32 groups × 4 writers), idle (CPU of 100 and 1,000 quiesced groups), failover (SIGKILL the leader's process among
/// 3 real `canopy raft-node` processes). Results and the comparison with DotNext: docs/benchmarks.md.
/// </summary>
public static class BenchRaftCommand
{
    private static readonly string[] Scenarios = ["all", "single", "multi", "idle", "failover"];

    public static Command Build()
    {
        var bench = new Command("bench", "Benchmarks.");
        bench.Subcommands.Add(BuildRaft());
        bench.Subcommands.Add(BenchGodotCommand.Build());
        return bench;
    }

    private static Command BuildRaft()
    {
        var scenario = new Option<string>("--scenario")
        {
            Description = "Which scenario to run: all, single (one group), multi (32 groups), idle (quiesced groups' CPU), failover (SIGKILL the leader).",
            HelpName = "name",
            DefaultValueFactory = _ => "all",
        };
        scenario.AcceptOnlyFromAmong(Scenarios);
        var duration = Options.Duration("--duration", "Measured time of each load phase and of each idle measurement (after a warm-up).", TimeSpan.FromSeconds(10));
        var trials = Options.Int("--trials", "Failover trials (SIGKILL of a leader's process each).", 5, min: 1);
        var electionTicks = Options.Int("--failover-election-ticks", "Election timeout of the failover's raft-node processes, in 50 ms ticks (randomised up to twice that); 10 is raft-node's default.", 10, min: 2);
        var json = new Option<bool>("--json") { Description = "Print one JSON object with every number on stdout (progress and tables go to stderr)." };

        var raft = new Command("raft", "Benchmark the Raft layer: 3 servers, 3 replicas per group, RocksDB, TCP on 127.0.0.1.")
        {
            scenario, duration, trials, electionTicks, json,
        };

        raft.SetAction(async (parseResult, ct) =>
        {
            var which = parseResult.GetValue(scenario) ?? "all";
            var ctx = new BenchContext(
                parseResult.InvocationConfiguration.Output,
                parseResult.InvocationConfiguration.Error,
                parseResult.GetValue(json),
                parseResult.GetValue(duration) ?? TimeSpan.FromSeconds(10),
                parseResult.GetValue(trials),
                parseResult.GetValue(electionTicks),
                ct);

            var result = new JsonObject
            {
                ["benchmark"] = "canopy bench raft",
                ["scenario"] = which,
                ["date_utc"] = DateTime.UtcNow.ToString("yyyy-MM-ddTHH:mm:ssZ", CultureInfo.InvariantCulture),
                ["machine"] = Machine(),
                ["duration_s"] = ctx.Duration.TotalSeconds,
                ["value_bytes"] = InProcessLoad.ValueBytes,
                ["key_bytes"] = InProcessLoad.KeyBytes,
            };

            ctx.Progress($"canopy bench raft --scenario {which} --duration {Duration.Format(ctx.Duration)} on {Environment.ProcessorCount} cores ({CpuModel()})");
            var sw = Stopwatch.StartNew();
            if (which is "all" or "single")
            {
                result["single"] = await InProcessScenarios.SingleAsync(ctx);
            }

            if (which is "all" or "multi")
            {
                result["multi"] = await InProcessScenarios.MultiAsync(ctx);
            }

            if (which is "all" or "idle")
            {
                result["idle"] = await InProcessScenarios.IdleAsync(ctx);
            }

            if (which is "all" or "failover")
            {
                result["failover"] = await FailoverScenario.RunAsync(ctx);
            }

            result["elapsed_s"] = Math.Round(sw.Elapsed.TotalSeconds, 1);
            ctx.Progress($"done in {sw.Elapsed.TotalSeconds:F0} s");
            if (ctx.Json)
            {
                parseResult.InvocationConfiguration.Output.WriteLine(result.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            }

            return ExitCodes.Success;
        });

        return raft;
    }

    private static JsonObject Machine() => new()
    {
        ["cores"] = Environment.ProcessorCount,
        ["cpu"] = CpuModel(),
        ["os"] = RuntimeInformation.OSDescription,
        ["runtime"] = RuntimeInformation.FrameworkDescription,
    };

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
}
