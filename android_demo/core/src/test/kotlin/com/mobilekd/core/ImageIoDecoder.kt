package com.mobilekd.core

import java.awt.image.DataBuffer
import java.awt.image.IndexColorModel
import java.io.ByteArrayInputStream
import javax.imageio.ImageIO

/**
 * The JVM side of the [ImageDecoder] boundary (tests only: Android has no javax.imageio). Reads the raster's
 * samples directly rather than `BufferedImage.getRGB`, which would colour-convert grey images; results match
 * Pillow's `Image.open(...).convert("RGB")` for 8-bit PNGs (grey replicated, alpha dropped). JPEG decoders
 * differ between libraries, so JPEG pixels are close to, not identical with, Pillow's.
 */
object ImageIoDecoder : ImageDecoder {
    override fun decode(bytes: ByteArray): RgbImage {
        val img = try {
            ImageIO.read(ByteArrayInputStream(bytes))
        } catch (e: Exception) {
            throw ImageDecodeException("cannot decode image: ${e.message}", e)
        } ?: throw ImageDecodeException("cannot decode image: unknown or corrupt format (${bytes.size} bytes)")
        val w = img.width
        val h = img.height
        val pixels = IntArray(w * h)
        val raster = img.raster
        val bands = raster.numBands
        val direct = img.colorModel !is IndexColorModel && bands in 1..4 &&
            (raster.transferType == DataBuffer.TYPE_BYTE || raster.transferType == DataBuffer.TYPE_USHORT)
        if (!direct) {
            img.getRGB(0, 0, w, h, pixels, 0, w)
            return RgbImage(w, h, pixels)
        }
        val shift = if (raster.transferType == DataBuffer.TYPE_USHORT) 8 else 0
        val row = IntArray(w * bands)
        for (y in 0 until h) {
            raster.getPixels(0, y, w, 1, row)
            for (x in 0 until w) {
                val o = x * bands
                val r: Int; val g: Int; val b: Int
                if (bands <= 2) { r = row[o] shr shift; g = r; b = r } else {
                    r = row[o] shr shift; g = row[o + 1] shr shift; b = row[o + 2] shr shift
                }
                pixels[y * w + x] = (0xFF shl 24) or (r shl 16) or (g shl 8) or b
            }
        }
        return RgbImage(w, h, pixels)
    }
}
