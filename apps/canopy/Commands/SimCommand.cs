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
        sim.Subcommands.Add(BuildTxn());
        return sim;
    }

    private static Command BuildTxn()
    {
        var defaults = new TxnSimOptions();
        var seeds = Options.Int("--seeds", "How many seeds to run (seeds 1..N).", defaults.Seeds, min: 1);
        var seed = Options.ULong("--seed", "Run exactly this one seed (to reproduce a failure).");
        var servers = Options.Int("--servers", "Simulated servers.", defaults.Servers, min: 1);
        var accounts = Options.Int("--accounts", "Bank accounts (spread over 6 ranges).", defaults.Accounts, min: 2);
        var clients = Options.Int("--clients", "Concurrent client loops.", defaults.Clients, min: 1);
        var duration = Options.Duration("--duration", "Virtual time of the transfer phase of each seed.", defaults.Duration);
        var noFaults = new Option<bool>("--no-faults") { Description = "No message loss and no coordinator crashes." };
        var plantBug = new Option<string?>("--plant-bug")
        {
            Description = $"Plant a known transaction bug; the run must then find violations. One of: {string.Join(", ", Enum.GetNames<Canopy.Txn.TxnBugs>().Skip(1))}.",
            HelpName = "name",
        };
        plantBug.Validators.Add(result =>
        {
            var name = result.GetValueOrDefault<string?>();
            if (name is not null && (!Enum.TryParse<Canopy.Txn.TxnBugs>(name, ignoreCase: true, out var b) || b == Canopy.Txn.TxnBugs.None))
            {
                result.AddError($"unknown bug '{name}' for --plant-bug");
            }
        });
        var command = new Command("txn", "Run the transaction simulation (our coordinator and replica code, deterministic, lossy network, coordinator crashes; bank history checked in commit order) over many seeds; exits 1 on any violation.")
        {
            seeds, seed, servers, accounts, clients, duration, noFaults, plantBug,
        };
        command.SetAction(parseResult =>
        {
            var oneSeed = parseResult.GetValue(seed);
            var faults = !parseResult.GetValue(noFaults);
            var options = defaults with
            {
                Seeds = oneSeed is null ? parseResult.GetValue(seeds) : 1,
                FirstSeed = oneSeed ?? defaults.FirstSeed,
                Servers = parseResult.GetValue(servers),
                Accounts = parseResult.GetValue(accounts),
                Clients = parseResult.GetValue(clients),
                Duration = parseResult.GetValue(duration) ?? defaults.Duration,
                Loss = faults ? defaults.Loss : 0,
                CrashRate = faults ? defaults.CrashRate : 0,
                Bugs = parseResult.GetValue(plantBug) is { } b ? Enum.Parse<Canopy.Txn.TxnBugs>(b, ignoreCase: true) : Canopy.Txn.TxnBugs.None,
            };
            var output = parseResult.InvocationConfiguration.Output;
            var sw = System.Diagnostics.Stopwatch.StartNew();
            var results = TxnSimulation.Run(options, r =>
            {
                if (r.Violation is not null || oneSeed is not null)
                {
                    lock (output)
                    {
                        output.WriteLine($"seed {r.Seed}: {r.Violation ?? "ok"} ({r.Committed} committed, {r.Aborted} aborted, {r.Ambiguous} ambiguous, {r.Crashed} crashed coordinators, {r.Steps} steps)");
                        if (r.Violation is not null)
                        {
                            output.WriteLine($"  replay: canopy sim txn --seed {r.Seed}");
                        }
                    }
                }
            });
            var violations = results.Count(r => r.Violation is not null);
            output.WriteLine($"ran {results.Count} seeds in {sw.Elapsed.TotalSeconds:0.0} s ({results.Sum(r => r.Committed)} committed, {results.Sum(r => r.Aborted)} aborted, {results.Sum(r => r.Ambiguous)} ambiguous, {results.Sum(r => r.Crashed)} crashed)");
            output.WriteLine($"seeds: {results.Count}, violations: {violations}");
            return violations > 0 ? ExitCodes.Failure : ExitCodes.Success;
        });
        return command;
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
