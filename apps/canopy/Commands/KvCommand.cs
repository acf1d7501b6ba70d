using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using Canopy.Client;

namespace Canopy.Cli.Commands;

/// <summary>
/// <c>canopy kv put|get|del|scan --host H[,H2...]</c>: plain key-value access through the client SDK (routing to
/// leaseholders, retries). Keys and values on the command line are UTF-8 text; output shows bytes as text when
/// printable, else as 0x-hex.
/// </summary>
public static class KvCommand
{
    public static Command Build()
    {
        var kv = new Command("kv", "Read and write keys of a running cluster.");
        kv.Subcommands.Add(BuildPut());
        kv.Subcommands.Add(BuildGet());
        kv.Subcommands.Add(BuildDelete());
        kv.Subcommands.Add(BuildScan());
        return kv;
    }

    private static Command BuildPut()
    {
        var host = ClusterCli.HostOption();
        var key = new Argument<string>("key") { Description = "The key (UTF-8 text)." };
        var value = new Argument<string>("value") { Description = "The value (UTF-8 text)." };
        var cmd = new Command("put", "Set a key to a value.") { host, key, value };
        cmd.SetAction((parseResult, ct) =>
        {
            var k = ClusterCli.Key(parseResult.GetValue(key)!);
            var v = ClusterCli.Value(parseResult.GetValue(value)!);
            return ClusterCli.RunAsync(parseResult, host, ct, async (client, _) =>
            {
                await client.PutAsync(k, v, ct);
                return ExitCodes.Success;
            });
        });
        return cmd;
    }

    private static Command BuildGet()
    {
        var host = ClusterCli.HostOption();
        var key = new Argument<string>("key") { Description = "The key (UTF-8 text)." };
        var cmd = new Command("get", "Print the value of a key (exit 1 when there is none).") { host, key };
        cmd.SetAction((parseResult, ct) =>
        {
            var text = parseResult.GetValue(key)!;
            var k = ClusterCli.Key(text);
            return ClusterCli.RunAsync(parseResult, host, ct, async (client, output) =>
            {
                var v = await client.GetAsync(k, ct) ?? throw new CliException($"key not found: {text}");
                output.WriteLine(CanopyKeys.TryText(v, out var s) ? s : CanopyKeys.Hex(v));
                return ExitCodes.Success;
            });
        });
        return cmd;
    }

    private static Command BuildDelete()
    {
        var host = ClusterCli.HostOption();
        var key = new Argument<string>("key") { Description = "The key (UTF-8 text)." };
        var cmd = new Command("del", "Delete a key (no error when it does not exist).") { host, key };
        cmd.Aliases.Add("delete");
        cmd.SetAction((parseResult, ct) =>
        {
            var k = ClusterCli.Key(parseResult.GetValue(key)!);
            return ClusterCli.RunAsync(parseResult, host, ct, async (client, _) =>
            {
                await client.DeleteAsync(k, ct);
                return ExitCodes.Success;
            });
        });
        return cmd;
    }

    private static Command BuildScan()
    {
        var host = ClusterCli.HostOption();
        var start = new Option<string>("--start") { Description = "First key (inclusive) [default: the first user key].", HelpName = "key" };
        var end = new Option<string>("--end") { Description = "End key (exclusive) [default: the end of the key space].", HelpName = "key" };
        var limit = Options.Int("--limit", "Most rows to print; 0 = all.", 0, min: 0);
        var cmd = new Command("scan", "Print the keys in [start, end) with their values, one KEY<TAB>VALUE line each, in key order.") { host, start, end, limit };
        cmd.SetAction((parseResult, ct) =>
        {
            var s = parseResult.GetValue(start) is { Length: > 0 } st ? ClusterCli.Key(st, "--start") : [];
            var e = parseResult.GetValue(end) is { Length: > 0 } en ? ClusterCli.Key(en, "--end") : null;
            var n = parseResult.GetValue(limit);
            return ClusterCli.RunAsync(parseResult, host, ct, async (client, output) =>
            {
                foreach (var row in await client.ScanAsync(s, e, n, ct))
                {
                    output.Write(CanopyKeys.Format(row.Key));
                    output.Write('\t');
                    output.WriteLine(CanopyKeys.Format(row.Value));
                }

                return ExitCodes.Success;
            });
        });
        return cmd;
    }
}

/// <summary>What the commands that talk to a running cluster share: --host, --format, timeouts, key parsing, tables.</summary>
internal static class ClusterCli
{
    /// <summary>Connect timeout of CLI commands: an unreachable host fails fast.</summary>
    public static readonly TimeSpan ConnectTimeout = TimeSpan.FromSeconds(3);

    /// <summary>Overall timeout of one request, retries included (CANOPY_TIMEOUT overrides it).</summary>
    public static readonly TimeSpan RequestTimeout = TimeSpan.FromSeconds(10);

    public static Option<string> HostOption() => new("--host")
    {
        Description = "Server(s) to contact: HOST:PORT[,HOST:PORT...] (their --listen-addr).",
        HelpName = "host:port",
        Required = true,
    };

    public static Option<string> FormatOption()
    {
        var format = new Option<string>("--format")
        {
            Description = "Output format: table or json.",
            HelpName = "format",
            DefaultValueFactory = _ => "table",
        };
        format.AcceptOnlyFromAmong("table", "json");
        return format;
    }

    /// <summary>A key given on the command line (UTF-8), checked client-side: a bad one is a usage error (exit 2).</summary>
    public static byte[] Key(string text, string what = "key")
    {
        var bytes = Encoding.UTF8.GetBytes(text);
        return CanopyKeys.Validate(bytes) is { } why
            ? throw CliException.Usage($"invalid {what} '{Shorten(text)}': {why}")
            : bytes;
    }

    public static byte[] Value(string text)
    {
        var bytes = Encoding.UTF8.GetBytes(text);
        return CanopyKeys.ValidateValue(bytes) is { } why ? throw CliException.Usage($"invalid value: {why}") : bytes;
    }

    /// <summary>Client options of CLI commands; CANOPY_TIMEOUT (e.g. 30s, or a number of seconds) sets the request timeout.</summary>
    public static CanopyClientOptions ClientOptions()
    {
        var request = RequestTimeout;
        if (Environment.GetEnvironmentVariable("CANOPY_TIMEOUT") is { Length: > 0 } text)
        {
            if (double.TryParse(text, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var seconds) && seconds > 0 && seconds < 1e6)
            {
                request = TimeSpan.FromSeconds(seconds);
            }
            else if (Duration.TryParse(text, out var value, out var error) && value > TimeSpan.Zero)
            {
                request = value;
            }
            else
            {
                throw CliException.Usage($"invalid CANOPY_TIMEOUT '{text}': {(error.Length > 0 ? error : "must be positive")}");
            }
        }

        return new CanopyClientOptions
        {
            ConnectTimeout = request < ConnectTimeout ? request : ConnectTimeout,
            RequestTimeout = request,
            AttemptTimeout = request < TimeSpan.FromSeconds(5) ? request : TimeSpan.FromSeconds(5),
        };
    }

    /// <summary>Connects to the --host servers, runs <paramref name="body"/>, closes. SDK argument errors are usage errors.</summary>
    public static async Task<int> RunAsync(ParseResult parseResult, Option<string> host, CancellationToken ct, Func<CanopyClient, TextWriter, Task<int>> body)
    {
        var addresses = (parseResult.GetValue(host) ?? string.Empty)
            .Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (addresses.Length == 0)
        {
            throw CliException.Usage("--host needs at least one HOST:PORT");
        }

        var options = ClientOptions();
        CanopyClient client;
        try
        {
            client = await CanopyClient.ConnectAsync(addresses, options, ct);
        }
        catch (ArgumentException ex)
        {
            throw CliException.Usage($"{ex.Message} (for --host)");
        }

        await using (client)
        {
            try
            {
                return await body(client, parseResult.InvocationConfiguration.Output);
            }
            catch (ArgumentException ex)
            {
                throw CliException.Usage(ex.Message);
            }
        }
    }

    /// <summary>Writes a plain text table: a header, then rows; columns left-aligned, two spaces apart.</summary>
    public static void WriteTable(TextWriter output, IReadOnlyList<string> headers, IReadOnlyList<string[]> rows)
    {
        var widths = headers.Select(h => h.Length).ToArray();
        foreach (var row in rows)
        {
            for (var i = 0; i < widths.Length; i++)
            {
                widths[i] = Math.Max(widths[i], row[i].Length);
            }
        }

        var line = new StringBuilder();
        void Write(IReadOnlyList<string> cells)
        {
            line.Clear();
            for (var i = 0; i < widths.Length; i++)
            {
                line.Append(i == widths.Length - 1 ? cells[i] : cells[i].PadRight(widths[i] + 2));
            }

            output.WriteLine(line.ToString().TrimEnd());
        }

        Write(headers);
        foreach (var row in rows)
        {
            Write(row);
        }
    }

    /// <summary>An indented JSON document written by <paramref name="write"/>, then a newline.</summary>
    public static void WriteJson(TextWriter output, Action<Utf8JsonWriter> write)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            write(json);
        }

        output.WriteLine(Encoding.UTF8.GetString(buffer.GetBuffer(), 0, (int)buffer.Length));
    }

    private static string Shorten(string text) => text.Length <= 40 ? text : text[..40] + "...";
}
