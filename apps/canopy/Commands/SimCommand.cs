using System.CommandLine;
using Canopy.Simulation;

namespace Canopy.Cli.Commands;

/// <summary><c>canopy sim ...</c>: deterministic, seeded simulations.</summary>
public static class SimCommand
{
    public static Command Build()
    {
        var sim = new Command("sim", "Deterministic simulations: many seeded runs with injected faults, checked for violations.");
        sim.Subcommands.Add(BuildRaft());
        sim.Subcommands.Add(BuildRanges());
        return sim;
    }

    private static Command BuildRaft()
    {
        var defaults = new RaftSimOptions();

        var seeds = Options.Int("--seeds", "How many seeds to run (seeds 1..N).", defaults.Seeds, min: 1);
        var seed = Options.ULong("--seed", "Run exactly this one seed (to reproduce a failure).");
        var servers = Options.Int("--servers", "Simulated servers.", defaults.Servers, min: 3);
        var groups = Options.Int("--groups", "Raft groups (ranges), 3 replicas each.", defaults.Groups, min: 1);
        var duration = Options.Duration("--duration", "Simulated time of the faulty phase of each seed, before the network heals (e.g. 20s, 500ms, 2m).", defaults.Duration);
        var noFaults = new Option<bool>("--no-faults") { Description = "Inject no faults (no loss, partitions, crashes, clock jumps or membership changes)." };
        var plantBug = new Option<string?>("--plant-bug")
        {
            Description = $"Plant a known Raft bug; the run must then find violations (mutation check). One of: {string.Join(", ", RaftSimulation.PlantableBugs)}.",
            HelpName = "name",
        };
        plantBug.Validators.Add(result =>
        {
            var name = result.GetValueOrDefault<string?>();
            if (name is not null && !RaftSimulation.PlantableBugs.Contains(name))
            {
                result.AddError($"unknown bug '{name}' for --plant-bug (known: {string.Join(", ", RaftSimulation.PlantableBugs)})");
            }
        });
        var parallelism = Options.Int("--parallelism", "Seeds run at once (each seed is single-threaded and deterministic).", defaults.Parallelism, min: 1);
        var verbose = new Option<bool>("--verbose") { Description = "Print every seed's summary, not just failures." };

        var raft = new Command("raft", "Run the multi-range Raft simulation over many seeds; exits 1 if any seed violates a safety property.")
        {
            seeds, seed, servers, groups, duration, noFaults, plantBug, parallelism, verbose,
        };

        raft.SetAction(parseResult =>
        {
            var oneSeed = parseResult.GetValue(seed);
            if (oneSeed is not null && parseResult.GetResult(seeds) is { Implicit: false })
            {
                throw CliException.Usage("use either --seeds N (run seeds 1..N) or --seed S (run seed S), not both");
            }

            var options = defaults with
            {
                Seeds = oneSeed is null ? parseResult.GetValue(seeds) : 1,
                FirstSeed = oneSeed ?? defaults.FirstSeed,
                Servers = parseResult.GetValue(servers),
                Groups = parseResult.GetValue(groups),
                Duration = parseResult.GetValue(duration) ?? defaults.Duration,
                Faults = !parseResult.GetValue(noFaults),
                PlantBug = parseResult.GetValue(plantBug),
                Parallelism = parseResult.GetValue(parallelism),
                Verbose = parseResult.GetValue(verbose),
            };

            // RunMany prints failing seeds (with a replay command line) and ends with the contract line
            // `seeds: N, violations: V`; only the exit code is left to do here.
            var report = RaftSimulation.RunMany(options, parseResult.InvocationConfiguration.Output);
            return report.Violations > 0 ? ExitCodes.Failure : ExitCodes.Success;
        });

        return raft;
    }

    private static Command BuildRanges()
    {
        var defaults = new RangeSimOptions();

        var seeds = Options.Int("--seeds", "How many seeds to run (seeds 1..N).", defaults.Seeds, min: 1);
        var seed = Options.ULong("--seed", "Run exactly this one seed (to reproduce a failure).");
        var servers = Options.Int("--servers", "Simulated servers.", defaults.Servers, min: 3);
        var ranges = Options.Int("--ranges", "Ranges, 3 replicas each.", defaults.Ranges, min: 1);
        var keys = Options.Int("--keys", "Keys per range that the clients read and write.", defaults.KeysPerRange, min: 1);
        var duration = Options.Duration("--duration", "Simulated time of the faulty phase of each seed, before the network heals (e.g. 12s, 500ms, 2m).", defaults.Duration);
        var noFaults = new Option<bool>("--no-faults") { Description = "Inject no faults (no loss, partitions, crashes, pauses, tick faults or leadership transfers)." };
        var pauses = new Option<bool>("--evaluation-pauses") { Description = "Sometimes pause a server between its lease check and the request's timestamp (as a GC pause can)." };
        var plantBug = new Option<string?>("--plant-bug")
        {
            Description = $"Plant a bug in the simulated lease manager or evaluation; the run must then find violations (mutation check). One of: {string.Join(", ", RangeSimulation.PlantableBugs)}.",
            HelpName = "name",
        };
        plantBug.Validators.Add(result =>
        {
            var name = result.GetValueOrDefault<string?>();
            if (name is not null && !RangeSimulation.PlantableBugs.Contains(name))
            {
                result.AddError($"unknown bug '{name}' for --plant-bug (known: {string.Join(", ", RangeSimulation.PlantableBugs)})");
            }
        });
        var parallelism = Options.Int("--parallelism", "Seeds run at once (each seed is single-threaded and deterministic).", defaults.Parallelism, min: 1);
        var verbose = new Option<bool>("--verbose") { Description = "Print every seed's summary, not just failures." };
        var asIs = new Option<bool>("--as-server") { Description = "Simulate CanopyServer exactly as it is, without the fixes of the bugs this simulation found (serving before catching up after a restart; checking the lease before taking the timestamp)." };
        var historyOnly = new Option<bool>("--history-check-only") { Description = "Check only client histories (linearizability) and liveness, not the lease invariants." };
        var trace = new Option<bool>("--trace") { Description = "With --seed: print every client operation, serve and lease change of the seed." };

        var command = new Command("ranges", "Run the range-layer simulation (leases, evaluation, linearizability of client histories) over many seeds; exits 1 if any seed violates a property.")
        {
            seeds, seed, servers, ranges, keys, duration, noFaults, pauses, asIs, historyOnly, plantBug, parallelism, verbose, trace,
        };

        command.SetAction(parseResult =>
        {
            var oneSeed = parseResult.GetValue(seed);
            if (oneSeed is not null && parseResult.GetResult(seeds) is { Implicit: false })
            {
                throw CliException.Usage("use either --seeds N (run seeds 1..N) or --seed S (run seed S), not both");
            }

            if (parseResult.GetValue(trace) && oneSeed is null)
            {
                throw CliException.Usage("--trace needs --seed S (one seed)");
            }

            var options = defaults with
            {
                Seeds = oneSeed is null ? parseResult.GetValue(seeds) : 1,
                FirstSeed = oneSeed ?? defaults.FirstSeed,
                Servers = parseResult.GetValue(servers),
                Trace = parseResult.GetValue(trace) ? parseResult.InvocationConfiguration.Output : null,
                Ranges = parseResult.GetValue(ranges),
                KeysPerRange = parseResult.GetValue(keys),
                Duration = parseResult.GetValue(duration) ?? defaults.Duration,
                Faults = !parseResult.GetValue(noFaults),
                EvaluationPauses = parseResult.GetValue(pauses),
                ServerFixes = !parseResult.GetValue(asIs),
                HistoryCheckOnly = parseResult.GetValue(historyOnly),
                PlantBug = parseResult.GetValue(plantBug),
                Parallelism = parseResult.GetValue(parallelism),
                Verbose = parseResult.GetValue(verbose) || oneSeed is not null,
            };

            var report = RangeSimulation.RunMany(options, parseResult.InvocationConfiguration.Output);
            return report.Violations > 0 ? ExitCodes.Failure : ExitCodes.Success;
        });

        return command;
    }
}
