using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using Canopy.Client;

namespace Canopy.Cli.Commands;

/// <summary>
/// <c>canopy workload bank</c>: concurrent transfers between accounts spread over ranges on different leaders, each a
/// serializable transaction (read both balances, move a random amount if the source covers it). At the end one
/// transaction reads every account: the total must be unchanged and no balance negative (exit 1 otherwise). Counts
/// every attempt's outcome: committed, aborted (retryable: conflicts, deadlocks), ambiguous (lost contact mid-commit:
/// the transfer happened or not, atomically either way, so the invariant still holds), errors (no server answered).
/// </summary>
public static class WorkloadCommand
{
    /// <summary>Each account's starting balance.</summary>
    public const long InitialBalance = 1000;

    /// <summary>First letters of the account keys: one per user range of the default layout (split at e, i, n, r, v).</summary>
    private static readonly string[] Spread = ["b", "f", "j", "o", "s", "w"];

    public static Command Build()
    {
        var workload = new Command("workload", "Run a checking workload against a running cluster.");
        workload.Subcommands.Add(BuildBank());
        workload.Subcommands.Add(TreeWorkload.Build());
        return workload;
    }

    private static Command BuildBank()
    {
        var host = ClusterCli.HostOption();
        var accounts = Options.Int("--accounts", "Number of accounts (spread over the ranges).", 60, 2);
        var duration = Options.Duration("--duration", "How long to run transfers.", TimeSpan.FromSeconds(20));
        var concurrency = Options.Int("--concurrency", "Concurrent transfer loops.", 8, 1);
        var cmd = new Command("bank", "Concurrent transfers between accounts on different leaders; checks the total is unchanged and no balance is negative.")
        {
            host, accounts, duration, concurrency,
        };
        cmd.SetAction((parseResult, ct) =>
        {
            var n = parseResult.GetValue(accounts);
            var d = parseResult.GetValue(duration) ?? TimeSpan.FromSeconds(20);
            var c = parseResult.GetValue(concurrency);
            return ClusterCli.RunAsync(parseResult, host, ct, (client, output) => RunBankAsync(client, output, n, d, c, ct));
        });
        return cmd;
    }

    private sealed class Counters
    {
        public long Committed;
        public long Aborted;
        public long Ambiguous;
        public long Errors;
        public long NoFunds;
        public readonly List<double> LatencyMs = [];
        public readonly Dictionary<string, int> AbortReasons = [];

        /// <summary>Every committed transfer: what it read and wrote, at its commit timestamp (the serial order).</summary>
        public readonly List<Transfer> History = [];
    }

    /// <summary>A committed transfer for the history check.</summary>
    private sealed record Transfer((long Wall, int Logical) CommitTs, int From, int To, long ReadFrom, long ReadTo, long Amount, bool Wrote);

    private static async Task<int> RunBankAsync(CanopyClient client, TextWriter output, int n, TimeSpan duration, int concurrency, CancellationToken ct)
    {
        var run = Convert.ToHexString(BitConverter.GetBytes(Random.Shared.NextInt64())).ToLowerInvariant()[..8];
        var keys = Enumerable.Range(0, n).Select(i => Encoding.UTF8.GetBytes($"{Spread[i % Spread.Length]}bank-{run}/{i:D5}")).ToArray();
        Console.Error.WriteLine($"bank {run}: {n} accounts of {InitialBalance} over {Math.Min(n, Spread.Length)} ranges, {concurrency} loops, {Duration.Format(duration)}");

        // Open the accounts, a few per transaction.
        foreach (var chunk in keys.Chunk(10))
        {
            var r = await client.RunTransactionAsync(async txn =>
            {
                foreach (var k in chunk)
                {
                    await txn.PutAsync(k, Encode(InitialBalance), ct);
                }
            }, ct: ct);
            if (!r.IsCommitted)
            {
                throw new CliException($"could not open the accounts: {r.Outcome}: {r.Reason}");
            }
        }

        var counters = new Counters();
        var stopAt = Stopwatch.StartNew();
        var loops = Enumerable.Range(0, concurrency).Select(_ => Task.Run(() => TransferLoopAsync(client, keys, counters, stopAt, duration, ct), ct)).ToArray();
        var progress = Task.Run(async () =>
        {
            while (stopAt.Elapsed < duration && !ct.IsCancellationRequested)
            {
                await Task.Delay(TimeSpan.FromSeconds(5), ct).ContinueWith(_ => { }, TaskScheduler.Default);
                Console.Error.WriteLine($"  {stopAt.Elapsed.TotalSeconds:0}s: committed {Interlocked.Read(ref counters.Committed)}, aborted {Interlocked.Read(ref counters.Aborted)}, ambiguous {Interlocked.Read(ref counters.Ambiguous)}, errors {Interlocked.Read(ref counters.Errors)}");
            }
        }, ct);
        await Task.WhenAll(loops);
        var elapsed = stopAt.Elapsed.TotalSeconds;

        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"transfers: committed {counters.Committed}, aborted {counters.Aborted}, ambiguous {counters.Ambiguous}, errors {counters.Errors} (insufficient funds {counters.NoFunds}) in {elapsed:0.0} s, {counters.Committed / elapsed:0.0} committed/s"));
        if (counters.AbortReasons.Count > 0)
        {
            output.WriteLine("abort reasons: " + string.Join("; ", counters.AbortReasons.OrderByDescending(kv => kv.Value).Take(4).Select(kv => $"{kv.Value}× {kv.Key}")));
        }

        lock (counters.LatencyMs)
        {
            if (counters.LatencyMs.Count > 0)
            {
                var sorted = counters.LatencyMs.Order().ToArray();
                output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"commit latency ms: p50 {Pct(sorted, 0.5):0.0}, p90 {Pct(sorted, 0.9):0.0}, p99 {Pct(sorted, 0.99):0.0}, max {sorted[^1]:0.0}"));
            }
        }

        // The history check: replayed in commit-timestamp order (the serial order of serializable transactions),
        // every transfer must have read exactly the balances the transfers before it left. Ambiguous transfers may or
        // may not be in the history, so the replay is exact only without them.
        var historyViolations = 0;
        if (counters.Ambiguous == 0)
        {
            var state = Enumerable.Repeat(InitialBalance, n).ToArray();
            foreach (var t in counters.History.OrderBy(t => t.CommitTs).ThenBy(t => t.Wrote ? 0 : 1)) // a read at T sees a write at T
            {
                if (state[t.From] != t.ReadFrom || state[t.To] != t.ReadTo)
                {
                    if (historyViolations++ < 5)
                    {
                        output.WriteLine($"history: transfer at {t.CommitTs.Wall}.{t.CommitTs.Logical} {t.From}->{t.To} read {t.ReadFrom}/{t.ReadTo} but the serial order has {state[t.From]}/{state[t.To]}");
                    }
                }

                if (t.Wrote)
                {
                    state[t.From] = t.ReadFrom - t.Amount;
                    state[t.To] = t.ReadTo + t.Amount;
                }
            }

            output.WriteLine($"history: {counters.History.Count} committed transfers replayed in commit order, {historyViolations} anomalies");
        }
        else
        {
            output.WriteLine("history: not replayed (ambiguous transfers make the order's content uncertain)");
        }

        // The check: one transaction reads every account (retried while the cluster recovers).
        long[]? balances = null;
        string? lastError = null;
        var checkDeadline = Stopwatch.StartNew();
        while (balances is null && checkDeadline.Elapsed < TimeSpan.FromSeconds(60))
        {
            try
            {
                var read = new long[n];
                var r = await client.RunTransactionAsync(async txn =>
                {
                    for (var i = 0; i < n; i++)
                    {
                        read[i] = Decode(await txn.GetAsync(keys[i], ct) ?? throw new CliException($"account {i} vanished"));
                    }
                }, ct: ct);
                if (r.IsCommitted)
                {
                    balances = read;
                }
                else
                {
                    lastError = $"{r.Outcome}: {r.Reason}";
                }
            }
            catch (CanopyException e)
            {
                lastError = e.Message;
                await Task.Delay(500, ct);
            }
        }

        if (balances is null)
        {
            throw new CliException($"could not read the accounts back to check them: {lastError}");
        }

        var total = balances.Sum();
        var negative = balances.Count(b => b < 0);
        output.WriteLine($"accounts: {n}, total {total} (expected {n * InitialBalance}), negative {negative}");
        if (total != n * InitialBalance || negative > 0 || historyViolations > 0)
        {
            output.WriteLine("VIOLATION: the bank invariant does not hold");
            return ExitCodes.Failure;
        }

        output.WriteLine("OK: the total is unchanged and no balance is negative");
        return ExitCodes.Success;
    }

    private static async Task TransferLoopAsync(CanopyClient client, byte[][] keys, Counters counters, Stopwatch clock, TimeSpan duration, CancellationToken ct)
    {
        var rng = new Random();
        var options = new TransactionOptions { MaxAttempts = 1 };
        while (clock.Elapsed < duration && !ct.IsCancellationRequested)
        {
            var from = rng.Next(keys.Length);
            var to = rng.Next(keys.Length - 1);
            if (to >= from)
            {
                to++;
            }

            var amount = rng.Next(1, 101);
            var noFunds = false;
            long readFrom = 0, readTo = 0;
            var started = Stopwatch.GetTimestamp();
            TransactionResult result;
            try
            {
                result = await client.RunTransactionAsync(async txn =>
                {
                    noFunds = false;
                    var a = Decode(await txn.GetAsync(keys[from], ct) ?? throw new CliException("account vanished"));
                    var b = Decode(await txn.GetAsync(keys[to], ct) ?? throw new CliException("account vanished"));
                    (readFrom, readTo) = (a, b);
                    if (a < amount)
                    {
                        noFunds = true;
                        return;
                    }

                    await txn.PutAsync(keys[from], Encode(a - amount), ct);
                    await txn.PutAsync(keys[to], Encode(b + amount), ct);
                }, options, ct);
            }
            catch (CanopyException e)
            {
                Interlocked.Increment(ref counters.Errors);
                lock (counters.AbortReasons)
                {
                    var key = "error: " + Short(e.Message);
                    counters.AbortReasons[key] = counters.AbortReasons.GetValueOrDefault(key) + 1;
                }

                await Task.Delay(100, CancellationToken.None);
                continue;
            }

            switch (result.Outcome)
            {
                case TransactionOutcome.Committed:
                    Interlocked.Increment(ref counters.Committed);
                    if (noFunds)
                    {
                        Interlocked.Increment(ref counters.NoFunds);
                    }

                    lock (counters.LatencyMs)
                    {
                        counters.LatencyMs.Add(Stopwatch.GetElapsedTime(started).TotalMilliseconds);
                        counters.History.Add(new Transfer(ParseTs(result.CommitTimestamp), from, to, readFrom, readTo, amount, !noFunds));
                    }

                    break;
                case TransactionOutcome.Aborted:
                    Interlocked.Increment(ref counters.Aborted);
                    lock (counters.AbortReasons)
                    {
                        var key = Short(result.Reason ?? "aborted");
                        counters.AbortReasons[key] = counters.AbortReasons.GetValueOrDefault(key) + 1;
                    }

                    break;
                default:
                    Interlocked.Increment(ref counters.Ambiguous);
                    break;
            }
        }
    }

    private static string Short(string reason)
    {
        var s = reason.Length > 160 ? reason[..160] : reason;
        return new string(s.Select(ch => char.IsAsciiHexDigit(ch) && ch is not ('a' or 'b' or 'c' or 'd' or 'e' or 'f') ? '#' : ch).ToArray());
    }

    private static (long, int) ParseTs(string? ts)
    {
        var parts = (ts ?? "0.0").Split('.');
        return (long.Parse(parts[0], CultureInfo.InvariantCulture), parts.Length > 1 ? int.Parse(parts[1], CultureInfo.InvariantCulture) : 0);
    }

    private static double Pct(double[] sorted, double p) => sorted[Math.Min(sorted.Length - 1, (int)(p * sorted.Length))];

    private static byte[] Encode(long v) => Encoding.ASCII.GetBytes(v.ToString(CultureInfo.InvariantCulture));

    private static long Decode(byte[] b) => long.Parse(Encoding.ASCII.GetString(b), CultureInfo.InvariantCulture);
}
