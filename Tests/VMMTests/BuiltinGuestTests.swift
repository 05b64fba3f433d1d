import Accelerators
import Foundation
import KVM
import Testing
import VMM

/// The accelerators this machine can run the guest on: SoftKVM always, the host where /dev/kvm is.
private let accelerators: [Accelerator] = HostKVM.isAvailable ? [.host, .soft] : [.soft]

/// Boots the built-in guest on `accelerator`, collecting what it prints.
private func runBuiltinGuest(on accelerator: Accelerator, output: (UInt8) -> Void = { _ in }) throws -> BuiltinGuest.RunResult {
    let guest = try BuiltinGuest(hypervisor: Hypervisor.open(accelerator))
    return try guest.run(output: output)
}

/// Adler-32 (RFC 1950), written here independently of the guest's loop.
private func adler32(_ bytes: [UInt8]) -> UInt32 {
    var a: UInt32 = 1
    var b: UInt32 = 0
    for byte in bytes {
        a = (a + UInt32(byte)) % 65521
        b = (b + a) % 65521
    }
    return b << 16 | a
}

@Test(arguments: accelerators)
func builtinGuestPrintsBannerAndALinePerMode(_ accelerator: Accelerator) throws {
    let result = try runBuiltinGuest(on: accelerator)
    let lines = String(decoding: result.output, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
    #expect(lines.count == 6)
    #expect(Array(lines.prefix(4)) == [
        "SwiftKVM built-in guest",
        "real mode: 16-bit",
        "protected mode: 32-bit",
        "long mode: 64-bit, paging on",
    ])
    #expect(lines.last == "")
}

@Test(arguments: accelerators)
func builtinGuestPrintsTheAdler32OfItsImage(_ accelerator: Accelerator) throws {
    let result = try runBuiltinGuest(on: accelerator)
    let text = String(decoding: result.output, as: UTF8.self)
    let line = try #require(text.split(separator: "\n").first { $0.hasPrefix("adler32: 0x") })
    let printed = try #require(UInt32(line.dropFirst("adler32: 0x".count), radix: 16))
    #expect(line.count == "adler32: 0x".count + 8)
    #expect(printed == adler32(BuiltinGuest.image))
}

@Test(arguments: accelerators)
func builtinGuestEndsWithSuccessStatusOnDebugExitPort(_ accelerator: Accelerator) throws {
    let result = try runBuiltinGuest(on: accelerator)
    #expect(result.status == BuiltinGuest.successStatus)
    // Each byte is an LSR read and a THR write; the status write is one more.
    #expect(result.exitCount >= 2 * result.output.count + 1)
}

@Test(arguments: accelerators)
func builtinGuestHandsEachSerialByteToTheCallbackInOrder(_ accelerator: Accelerator) throws {
    var streamed: [UInt8] = []
    let result = try runBuiltinGuest(on: accelerator) { streamed.append($0) }
    #expect(!streamed.isEmpty)
    #expect(streamed == result.output)
}

/// The repository's root, found from this file's path.
private let repositoryRoot = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// Whether GNU as and ld, which the build script needs, are on PATH.
private var binutilsPresent: Bool {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    return ["as", "ld", "od", "awk"].allSatisfy { tool in
        path.split(separator: ":").contains { FileManager.default.isExecutableFile(atPath: "\($0)/\(tool)") }
    }
}

@Test(.enabled(if: binutilsPresent))
func committedBuiltinGuestImageMatchesTheAssembledSource() throws {
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("builtin-guest-\(UUID().uuidString).swift")
    defer { try? FileManager.default.removeItem(at: scratch) }
    let script = Process()
    script.executableURL = URL(fileURLWithPath: "/bin/sh")
    script.arguments = [repositoryRoot.appendingPathComponent("scripts/build-builtin-guest.sh").path, scratch.path]
    try script.run()
    script.waitUntilExit()
    #expect(script.terminationStatus == 0)

    let rebuilt = try Data(contentsOf: scratch)
    let committed = try Data(contentsOf: repositoryRoot.appendingPathComponent("Sources/VMM/BuiltinGuest.generated.swift"))
    #expect(rebuilt == committed, "Sources/VMM/BuiltinGuest.generated.swift is stale: run scripts/build-builtin-guest.sh")
}

/// The soft CPU against the host, exit for exit: the same output, status
/// and number of KVM_RUN returns.
@Test(.enabled(if: HostKVM.isAvailable))
func builtinGuestRunsTheSameOnSoftKVMAsOnTheHost() throws {
    let host = try runBuiltinGuest(on: .host)
    let soft = try runBuiltinGuest(on: .soft)
    #expect(soft == host)
}
