package com.mobilekd.demo

import android.content.ContentResolver
import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.graphics.ColorSpace
import android.graphics.ImageDecoder as PlatformDecoder
import android.graphics.Matrix
import android.net.Uri
import android.os.Build
import androidx.exifinterface.media.ExifInterface
import com.mobilekd.core.ImageDecodeException
import com.mobilekd.core.ImageDecoder
import com.mobilekd.core.RgbImage
import java.io.ByteArrayInputStream

/**
 * Decodes photos to ARGB_8888 sRGB bitmaps, applying the EXIF orientation (camera photos are stored sideways).
 * Note: Python's mobilekd does not apply EXIF orientation; JPEG decoders also differ slightly between Pillow
 * (libjpeg-turbo) and Android (Skia), so pixels of the same JPEG can differ by a few levels.
 */
object AndroidImageDecoder : ImageDecoder {
    override fun decode(bytes: ByteArray): RgbImage = BitmapImages.toRgbImage(decodeBitmap(bytes))

    fun decodeBitmap(bytes: ByteArray): Bitmap {
        try {
            if (Build.VERSION.SDK_INT >= 28) {
                val source = PlatformDecoder.createSource(java.nio.ByteBuffer.wrap(bytes))
                return PlatformDecoder.decodeBitmap(source) { decoder, _, _ ->
                    decoder.allocator = PlatformDecoder.ALLOCATOR_SOFTWARE
                    decoder.setTargetColorSpace(ColorSpace.get(ColorSpace.Named.SRGB))
                }
            }
            val opts = BitmapFactory.Options().apply { inPreferredConfig = Bitmap.Config.ARGB_8888 }
            val bitmap = BitmapFactory.decodeByteArray(bytes, 0, bytes.size, opts)
                ?: throw ImageDecodeException("cannot decode image: unknown or corrupt format (${bytes.size} bytes)")
            val degrees = ExifInterface(ByteArrayInputStream(bytes)).rotationDegrees
            if (degrees == 0) return bitmap
            val m = Matrix().apply { postRotate(degrees.toFloat()) }
            return Bitmap.createBitmap(bitmap, 0, 0, bitmap.width, bitmap.height, m, true)
        } catch (e: ImageDecodeException) {
            throw e
        } catch (e: Exception) {
            throw ImageDecodeException("cannot decode image: ${e.message}", e)
        }
    }

    fun decodeBitmap(resolver: ContentResolver, uri: Uri): Bitmap {
        val bytes = try {
            resolver.openInputStream(uri)?.use { it.readBytes() }
        } catch (e: Exception) {
            throw ImageDecodeException("cannot read $uri: ${e.message}", e)
        } ?: throw ImageDecodeException("cannot read $uri")
        return decodeBitmap(bytes)
    }
}
