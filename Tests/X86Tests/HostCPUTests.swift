import Foundation
import Testing
@testable import X86

/// The host's own CPU as the oracle for what KVM's emulator refuses: a
/// 32-bit program (no libc; assembled with binutils when the test runs)
/// executes the instructions natively at CPL 3 and writes its results to
/// stdout. It needs an x86-64 host, `as` and `ld`, and a kernel that runs
/// 32-bit programs; elsewhere the tests are skipped.
enum HostCPU32 {
    static let tools = ["/usr/bin/as", "/usr/bin/ld"]

    /// Whether a trivial program builds and runs.
    static let isAvailable: Bool = {
        #if arch(x86_64)
        guard tools.allSatisfy({ FileManager.default.isExecutableFile(atPath: $0) }) else { return false }
        return (try? run(body: "", outputSize: 0)) != nil
        #else
        return false
        #endif
    }()

    /// Runs `body` (AT&T syntax, EDI pointing at an output buffer of
    /// `outputSize` bytes), then writes the buffer to stdout and returns it.
    static func run(body: String, outputSize: Int) throws -> Data {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("swiftkvm-hostcpu-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let source = """
            .code32
            .globl _start
            .section .bss
            buf: .space \(max(outputSize, 4))
            .section .text
            _start:
              lea buf, %edi
            \(body)
              mov $4, %eax
              mov $1, %ebx
              lea buf, %ecx
              mov $\(outputSize), %edx
              int $0x80
              mov $1, %eax
              xor %ebx, %ebx
              int $0x80

            """
        let path = directory.path
        try source.write(toFile: path + "/p.s", atomically: true, encoding: .utf8)
        guard try execute(tools[0], ["--32", "-o", path + "/p.o", path + "/p.s"]).status == 0,
              try execute(tools[1], ["-m", "elf_i386", "-o", path + "/p", path + "/p.o"]).status == 0
        else { throw CocoaError(.executableLoad) }
        let result = try execute(path + "/p", [])
        guard result.status == 0, result.output.count == outputSize else { throw CocoaError(.executableLoad) }
        return result.output
    }

    static func execute(_ program: String, _ arguments: [String]) throws -> (status: Int32, output: Data) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: program)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, output)
    }
}

@Suite("X86 against the host CPU running 32-bit code natively", .enabled(if: HostCPU32.isAvailable))
struct HostCPUTests {
    /// DAA DAS AAA AAS over every AL with each CF and AF (AH = 5): AX and
    /// the flags the manuals define must match the host CPU's.
    @Test(arguments: [(UInt8(0x27), "daa"), (0x2F, "das"), (0x37, "aaa"), (0x3F, "aas")])
    func decimalAdjustMatchesTheHostCPU(opcode: UInt8, mnemonic: String) throws {
        // For index 0 ..< 0x400: AL = index & 0xFF, CF = bit 8, AF = bit 9; store AX and FLAGS.
        let body = """
              xor %ebx, %ebx
            1:
              mov %ebx, %edx
              shr $8, %edx
              mov %edx, %ecx
              and $1, %ecx
              and $2, %edx
              shl $3, %edx
              or %ecx, %edx
              or $2, %edx
              mov %ebx, %eax
              and $0xff, %eax
              or $0x500, %eax
              push %edx
              popf
              \(mnemonic)
              pushf
              pop %edx
              mov %ax, (%edi)
              mov %dx, 2(%edi)
              add $4, %edi
              inc %ebx
              cmp $0x400, %ebx
              jne 1b
            """
        let host = try HostCPU32.run(body: body, outputSize: 0x400 * 4)
        let undefined = opcode <= 0x2F ? UndefinedFlags.decimalAdjust : UndefinedFlags.asciiAdjust
        let compared = RFLAGS.arithmetic & ~undefined
        let m = Machine(.protected32, code: [opcode, hlt])
        var differences: [String] = []
        for index in 0..<0x400 {
            m.cpu.state.rip = Machine.codeAddress
            m.cpu.state.rflags = 2 | (index & 0x100 != 0 ? RFLAGS.cf : 0) | (index & 0x200 != 0 ? RFLAGS.af : 0)
            m[.rax] = UInt64(index & 0xFF) | 0x500
            #expect(m.run() == .halt)
            let hostAX = UInt64(host[index * 4]) | UInt64(host[index * 4 + 1]) << 8
            let hostFlags = UInt64(host[index * 4 + 2]) | UInt64(host[index * 4 + 3]) << 8
            if m[.rax] & 0xFFFF != hostAX || m.cpu.state.rflags & compared != hostFlags & compared {
                differences.append("AL \(index & 0xFF) CF \(index >> 8 & 1) AF \(index >> 9): soft AX \(m[.rax] & 0xFFFF) flags \(m.cpu.state.rflags & compared), host AX \(hostAX) flags \(hostFlags & compared)")
            }
        }
        #expect(differences.isEmpty, "\(mnemonic): \(differences.count) differences, first \(differences.prefix(4))")
    }
}
